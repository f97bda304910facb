// Package localca gives a dpsd instance TLS without any set-up: on first
// start it creates a certificate authority in the data directory, keeps it
// across restarts, and issues server certificates for the names and
// addresses clients use. Users trust the CA file once.
package localca
