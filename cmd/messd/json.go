package main

import (
	fastjson "github.com/goccy/go-json"
	"github.com/labstack/echo/v4"
)

// jsonSerializer writes responses with goccy/go-json, the encoder the event
// log replay already uses: thread pages are the hot read path.
type jsonSerializer struct{}

func (jsonSerializer) Serialize(c echo.Context, i any, indent string) error {
	enc := fastjson.NewEncoder(c.Response())
	if indent != "" {
		enc.SetIndent("", indent)
	}
	return enc.Encode(i)
}

func (jsonSerializer) Deserialize(c echo.Context, i any) error {
	return fastjson.NewDecoder(c.Request().Body).Decode(i)
}
