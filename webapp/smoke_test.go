package webapp_test

import "testing"

func TestSmoke(t *testing.T) {
	srv := startServer(t)
	p := newPage(t, srv, phone)
	p.open("#/join")
	t.Setenv("MESS_SCREENSHOTS", "1")
	p.screenshot("smoke-join")
	p.fill("#join-name", "Ann Owner")
	p.click("#join-submit")
	p.waitText("main h1", "Me and my exchange")
	p.screenshot("smoke-me")
}
