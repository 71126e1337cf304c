// Package deploy holds what runs messd outside a Go toolchain: the container
// image (docker/Dockerfile), a Docker Compose file for the filesystem and
// MinIO setups (docker/docker-compose.yml) and a Helm chart (helm/). See
// README.md in this directory.
//
// The package has no Go API. Its tests build the binary exactly as the
// Dockerfile does and run it, render the chart for each storage mode and
// decode every object strictly into the Kubernetes API types, and check
// the Compose file's services.
package deploy
