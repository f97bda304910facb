// Package server assembles a dpsd node: it opens the store, loads the
// instance, prepares TLS (with a local CA when no certificate is given),
// and serves the device API (HTTPS, MQTT, MQTT over WebSockets) and the
// service API until its context ends.
package server
