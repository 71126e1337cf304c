// Package s3store is the storage.Store on S3-compatible object storage
// (MinIO, AWS S3, Cloudflare R2), through minio-go.
//
// Create is a PUT with If-None-Match: *, Update a PUT with If-Match: <etag>,
// and an object's ETag is its version, so the create-only and
// compare-and-swap writes the services rely on are done by the object store
// itself, for every process that shares the bucket. Call
// storage.VerifyConditionalWrites at start: some stores that call themselves
// S3-compatible ignore those headers.
package s3store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/meatspace-exchange/mess/storage"
)

// Config says where the bucket is and how to reach it.
type Config struct {
	// Endpoint is host[:port] of the S3 API, e.g. "127.0.0.1:9000" or
	// "s3.amazonaws.com". Required. A scheme, if given, sets Secure.
	Endpoint string
	// Bucket must exist already. Required.
	Bucket string
	// AccessKey and SecretKey are static credentials. Required.
	AccessKey, SecretKey string
	// Region is the bucket's region; empty lets the client discover it.
	Region string
	// Prefix is prepended to every key, so several deployments can share a
	// bucket. It must be empty or a valid storage key prefix ending in "/"
	// (one is added if missing).
	Prefix string
	// Secure selects HTTPS.
	Secure bool
	// Timeout bounds one call, retries included. Zero means 30s.
	Timeout time.Duration
	// Attempts is how often a call is tried when the store answers with a
	// transient failure (throttling, 5xx, a conditional-write conflict, a
	// network error). Zero means 5.
	Attempts int
	// Transport, if set, carries the HTTP requests (tests inject faults
	// with it).
	Transport http.RoundTripper
}

// Store is a storage.Store in one bucket under one prefix.
type Store struct {
	c      *minio.Client
	bucket string
	prefix string
	cfg    Config
}

var _ storage.Store = (*Store)(nil)

// New connects to the bucket and checks that it exists and that the
// credentials are accepted, so a misconfiguration is one clear error at
// start rather than failures later.
func New(ctx context.Context, cfg Config) (*Store, error) {
	switch {
	case cfg.Endpoint == "":
		return nil, errors.New("s3store: endpoint is required")
	case cfg.Bucket == "":
		return nil, errors.New("s3store: bucket is required")
	case cfg.AccessKey == "" || cfg.SecretKey == "":
		return nil, errors.New("s3store: access key and secret key are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Attempts <= 0 {
		cfg.Attempts = 5
	}
	if rest, ok := strings.CutPrefix(cfg.Endpoint, "https://"); ok {
		cfg.Endpoint, cfg.Secure = rest, true
	} else if rest, ok := strings.CutPrefix(cfg.Endpoint, "http://"); ok {
		cfg.Endpoint, cfg.Secure = rest, false
	}
	cfg.Endpoint = strings.TrimSuffix(cfg.Endpoint, "/")
	if cfg.Prefix != "" {
		if !strings.HasSuffix(cfg.Prefix, "/") {
			cfg.Prefix += "/"
		}
		if err := storage.ValidKey(strings.TrimSuffix(cfg.Prefix, "/")); err != nil {
			return nil, fmt.Errorf("s3store: prefix %q: %w", cfg.Prefix, err)
		}
	}
	c, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure:       cfg.Secure,
		Region:       cfg.Region,
		BucketLookup: minio.BucketLookupPath, // path style: what MinIO and most self-hosted stores want
		Transport:    cfg.Transport,
		MaxRetries:   1, // retries are ours, bounded by Timeout and ctx
	})
	if err != nil {
		return nil, fmt.Errorf("s3store: %w", err)
	}
	s := &Store{c: c, bucket: cfg.Bucket, prefix: cfg.Prefix, cfg: cfg}
	var exists bool
	err = s.retry(ctx, func(ctx context.Context) (err error) {
		exists, err = c.BucketExists(ctx, cfg.Bucket)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("s3store: reaching bucket %q at %s: %w", cfg.Bucket, cfg.Endpoint, describe(err))
	}
	if !exists {
		return nil, fmt.Errorf("s3store: bucket %q does not exist at %s", cfg.Bucket, cfg.Endpoint)
	}
	return s, nil
}

// describe turns the store's answer into one readable cause.
func describe(err error) error {
	switch minio.ToErrorResponse(err).Code {
	case "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied":
		return fmt.Errorf("credentials rejected (%s)", minio.ToErrorResponse(err).Code)
	}
	return err
}

func (s *Store) key(k string) string { return s.prefix + k }

// Get implements storage.Store.
func (s *Store) Get(ctx context.Context, key string) (storage.Object, error) {
	if err := storage.ValidKey(key); err != nil {
		return storage.Object{}, err
	}
	var obj storage.Object
	err := s.retry(ctx, func(ctx context.Context) error {
		// One GET gives the body and its ETag, so the version is the one
		// of the bytes read (the high-level reader may refetch later parts
		// with If-Match and fail when a writer came in between).
		body, info, _, err := minio.Core{Client: s.c}.GetObject(ctx, s.bucket, s.key(key), minio.GetObjectOptions{})
		if err != nil {
			return err
		}
		defer body.Close()
		data, err := io.ReadAll(body)
		if err != nil {
			return err
		}
		obj = storage.Object{Data: data, Version: info.ETag}
		return nil
	})
	if err != nil {
		return storage.Object{}, s.mapErr(key, err, nil)
	}
	return obj, nil
}

// Put implements storage.Store.
func (s *Store) Put(ctx context.Context, key string, data []byte) (string, error) {
	return s.put(ctx, key, data, minio.PutObjectOptions{}, nil)
}

// Create implements storage.Store with If-None-Match: *.
func (s *Store) Create(ctx context.Context, key string, data []byte) (string, error) {
	var opts minio.PutObjectOptions
	opts.SetMatchETagExcept("*")
	return s.put(ctx, key, data, opts, storage.ErrExists)
}

// Update implements storage.Store with If-Match: version.
func (s *Store) Update(ctx context.Context, key string, data []byte, version string) (string, error) {
	if version == "" {
		return "", fmt.Errorf("%w: %s: empty version", storage.ErrVersionMismatch, key)
	}
	var opts minio.PutObjectOptions
	opts.SetMatchETag(version)
	return s.put(ctx, key, data, opts, storage.ErrVersionMismatch)
}

// put writes data in one PUT (never multipart, so the condition applies to
// the whole object). onPrecondition is what a 412 means for this call.
func (s *Store) put(ctx context.Context, key string, data []byte, opts minio.PutObjectOptions, onPrecondition error) (string, error) {
	if err := storage.ValidKey(key); err != nil {
		return "", err
	}
	opts.DisableMultipart = true
	opts.ContentType = "application/octet-stream"
	var etag string
	err := s.retry(ctx, func(ctx context.Context) error {
		info, err := s.c.PutObject(ctx, s.bucket, s.key(key), bytes.NewReader(data), int64(len(data)), opts)
		etag = info.ETag
		return err
	})
	if err != nil {
		return "", s.mapErr(key, err, onPrecondition)
	}
	return etag, nil
}

// Delete implements storage.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := storage.ValidKey(key); err != nil {
		return err
	}
	err := s.retry(ctx, func(ctx context.Context) error {
		return s.c.RemoveObject(ctx, s.bucket, s.key(key), minio.RemoveObjectOptions{})
	})
	if err != nil && !errors.Is(s.mapErr(key, err, nil), storage.ErrNotFound) {
		return s.mapErr(key, err, nil)
	}
	return nil
}

// DeleteMany implements storage.BatchDeleter with the multi-object delete
// API: up to 1,000 keys a request.
func (s *Store) DeleteMany(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := storage.ValidKey(k); err != nil {
			return err
		}
	}
	for len(keys) > 0 {
		n := min(len(keys), 1000)
		batch := keys[:n]
		keys = keys[n:]
		err := s.retry(ctx, func(ctx context.Context) error {
			ch := make(chan minio.ObjectInfo, len(batch))
			for _, k := range batch {
				ch <- minio.ObjectInfo{Key: s.key(k)}
			}
			close(ch)
			for e := range s.c.RemoveObjects(ctx, s.bucket, ch, minio.RemoveObjectsOptions{}) {
				if e.Err != nil && minio.ToErrorResponse(e.Err).Code != "NoSuchKey" {
					return e.Err
				}
			}
			return nil
		})
		if err != nil {
			return s.mapErr(batch[0], err, nil)
		}
	}
	return nil
}

// List implements storage.Store with ListObjectsV2, which returns keys in
// ascending byte order as the interface requires.
func (s *Store) List(ctx context.Context, prefix string, opts storage.ListOptions) (storage.ListPage, error) {
	if err := storage.ValidPrefix(prefix); err != nil {
		return storage.ListPage{}, err
	}
	limit := opts.Limit
	if limit <= 0 {
		limit = storage.DefaultListLimit
	}
	var page storage.ListPage
	err := s.retry(ctx, func(ctx context.Context) error {
		page = storage.ListPage{}
		// The client pages on its own; cancelling stops it once the page is full.
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		lo := minio.ListObjectsOptions{Prefix: s.key(prefix), Recursive: true, MaxKeys: min(limit+1, 1000)}
		if opts.After != "" {
			lo.StartAfter = s.key(opts.After)
		}
		for info := range s.c.ListObjectsIter(lctx, s.bucket, lo) {
			if info.Err != nil {
				return info.Err
			}
			k, ok := strings.CutPrefix(info.Key, s.prefix)
			if !ok || storage.ValidKey(k) != nil {
				continue // not ours: another deployment's prefix, or a foreign object
			}
			if len(page.Keys) == limit {
				page.Next = page.Keys[limit-1]
				return nil
			}
			page.Keys = append(page.Keys, k)
		}
		return lctx.Err()
	})
	if err != nil {
		return storage.ListPage{}, s.mapErr(prefix, err, nil)
	}
	return page, nil
}

// retry runs op until it succeeds, fails for good, or the call's time is
// up, waiting with exponential backoff and full jitter between attempts.
func (s *Store) retry(ctx context.Context, op func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	backoff := 50 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil || attempt >= s.cfg.Attempts || !transient(err) {
			return err
		}
		wait := time.Duration(rand.Int64N(int64(backoff))) + time.Millisecond
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// transient reports whether trying again may succeed.
func transient(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	r := minio.ToErrorResponse(err)
	if r.StatusCode == 499 {
		// MinIO gave the request up while shutting down, with or
		// without a body naming it ClientDisconnected.
		return true
	}
	switch r.Code {
	case "ConditionalRequestConflict", "SlowDown", "SlowDownWrite", "SlowDownRead", "InternalError",
		"RequestTimeout", "Throttling", "ThrottlingException", "RequestLimitExceeded", "ServiceUnavailable",
		"XMinioServerNotInitialized", "XMinioStorageFull",
		// MinIO's answer (499) to a request it gave up while shutting down.
		"ClientDisconnected":
		return true
	case "":
		// Not an S3 answer: a network error, a broken connection.
		return r.StatusCode == 0 || r.StatusCode >= 500
	}
	return r.StatusCode == http.StatusTooManyRequests || r.StatusCode >= 500
}

// mapErr gives the store's answer the storage package's meaning.
func (s *Store) mapErr(key string, err error, onPrecondition error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("s3store: %s: %w", key, err)
	}
	r := minio.ToErrorResponse(err)
	switch {
	case r.Code == "NoSuchKey" || (r.StatusCode == http.StatusNotFound && r.Code != "NoSuchBucket"):
		return fmt.Errorf("%w: %s", storage.ErrNotFound, key)
	case r.StatusCode == http.StatusPreconditionFailed && onPrecondition != nil:
		return fmt.Errorf("%w: %s", onPrecondition, key)
	case r.Code == "ConditionalRequestConflict" && onPrecondition != nil:
		// Still conflicting after every retry: another writer is at it.
		return fmt.Errorf("%w: %s: concurrent conditional write", onPrecondition, key)
	}
	if transient(err) {
		return fmt.Errorf("s3store: %s: %w: %w", key, storage.ErrUnavailable, describe(err))
	}
	return fmt.Errorf("s3store: %s: %w", key, describe(err))
}
