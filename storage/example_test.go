package storage_test

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/meatspace-exchange/mess/storage"
)

func ExampleFS() {
	dir, _ := os.MkdirTemp("", "storage-example")
	defer os.RemoveAll(dir)
	s, err := storage.NewFS(dir)
	if err != nil {
		panic(err)
	}
	defer s.Close()
	ctx := context.Background()

	v, _ := s.Create(ctx, "config/owner.json", []byte(`{"owner":"alice"}`))
	_, err = s.Create(ctx, "config/owner.json", []byte(`{"owner":"mallory"}`))
	fmt.Println("second create:", errors.Is(err, storage.ErrExists))

	_, err = s.Update(ctx, "config/owner.json", []byte(`{"owner":"bob"}`), v)
	fmt.Println("update with current version:", err == nil)
	_, err = s.Update(ctx, "config/owner.json", []byte(`{"owner":"carol"}`), v)
	fmt.Println("update with stale version:", errors.Is(err, storage.ErrVersionMismatch))

	page, _ := s.List(ctx, "config/", storage.ListOptions{})
	fmt.Println(page.Keys)
	// Output:
	// second create: true
	// update with current version: true
	// update with stale version: true
	// [config/owner.json]
}
