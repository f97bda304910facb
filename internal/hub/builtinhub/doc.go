// Package builtinhub runs IoT hubs inside dpsd, so the whole provisioning flow
// works on one machine: a device provisioned into a built-in hub connects
// to it with the official Azure device SDK, reads its twin and sends
// telemetry.
//
// Each hub has a host name (by default {name}.azure-devices.internal) and
// its own shared access policies (iothubowner and the other defaults of a
// new Azure hub). Hubs share one endpoint (Options.Shared) — in dpsd the
// node's own listeners, which hand over the connections whose TLS server
// name is a hub's — and are told apart by what each protocol carries: the
// TLS server name, the MQTT user name ({hubHostName}/{deviceId}/…), the
// HTTP Host header or the SAS token's resource. So a hub needs no address
// of its own, and one hosts-file line ("127.0.0.2 a.azure-devices.internal
// b.azure-devices.internal") makes every hub's name resolve. A hub created
// with an address listens there by itself instead, on the standard ports
// the SDKs hard-code (HTTPS and MQTT over WebSockets on 443, MQTT on 8883).
// Certificates come from the local CA.
//
// Devices, modules, twins, persistent MQTT sessions, cloud-to-device
// queues, feedback and CA certificates live in the store, so hubs survive
// restarts; telemetry is stored before the device is acknowledged
// (telemetrylog.go) and served from a buffer per hub bounded by count,
// bytes and age. Nodes sharing a store run every hub of the shared
// endpoint and tell each other what concerns a device connected to
// another (cluster.go). The wire behaviour follows iothub-surface.md.
package builtinhub
