// Package storage defines where the services keep their state: a small
// keyed-object Store interface with create-only and compare-and-swap writes,
// and FS, the filesystem implementation used by default.
//
// The interface is deliberately the subset an S3-compatible object store
// offers natively (If-None-Match: * and If-Match on PUT, sorted paginated
// listing), so every service that runs on FS can move to object storage
// without changing its logic. Package storagetest holds the conformance
// suite each implementation passes.
//
// # Concurrency
//
// Store implementations are safe for concurrent use. FS serialises
// conditional writes between goroutines with mutexes and between processes
// sharing a directory with flock(2), so the guarantees hold for several
// processes on one machine as well.
//
// # Durability
//
// A write that returns nil is on disk: FS writes a temporary file, fsyncs
// it, renames it over the key and fsyncs the directory. A crash leaves
// either the old object or the new one, never a mix.
package storage
