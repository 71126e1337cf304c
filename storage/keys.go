package storage

import (
	"context"
	"iter"
)

// Keys yields every key under prefix in ascending order, reading s one
// page at a time, so a caller never writes the pagination loop itself. On
// a listing error it yields ("", err) once and stops.
//
//	for key, err := range storage.Keys(ctx, store, "events/") {
//		if err != nil {
//			return err
//		}
//		...
//	}
func Keys(ctx context.Context, s Store, prefix string) iter.Seq2[string, error] {
	return KeysAfter(ctx, s, prefix, "")
}

// KeysAfter is Keys starting strictly after the key after.
func KeysAfter(ctx context.Context, s Store, prefix, after string) iter.Seq2[string, error] {
	return func(yield func(string, error) bool) {
		opts := ListOptions{After: after}
		for {
			page, err := s.List(ctx, prefix, opts)
			if err != nil {
				yield("", err)
				return
			}
			for _, k := range page.Keys {
				if !yield(k, nil) {
					return
				}
			}
			if page.Next == "" {
				return
			}
			opts.After = page.Next
		}
	}
}
