// Package builtinhub runs IoT hubs inside dpsd, so the whole provisioning flow
// works on one machine: a device provisioned into a built-in hub connects
// to it with the official Azure device SDK, reads its twin and sends
// telemetry.
//
// Each hub has a host name (by default {name}.azure-devices.internal), its
// own shared access policies (iothubowner and the other defaults of a new
// Azure hub), and its own IP address — by default the next free loopback
// address 127.0.0.N — so that it can serve the standard ports, which
// several SDKs hard-code: HTTPS on 443 (service REST API and MQTT over
// WebSockets) and MQTT over TLS on 8883. Its TLS certificate, issued by the
// local CA, covers the host name and the address. A hosts-file line
// ("127.0.0.10 name.azure-devices.internal") makes the host name resolve.
//
// Devices, twins and persistent MQTT sessions live in the store, so hubs
// survive restarts; telemetry is kept in a bounded in-memory buffer per
// hub. The wire behaviour follows iothub-surface.md.
package builtinhub
