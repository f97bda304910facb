// Package provision is the provisioning engine: the one place that decides
// what happens when a device registers. Transports (HTTPS, MQTT, MQTT over
// WebSockets) decode a request into a Request and hand it to the Engine,
// which attests the device, allocates a hub, registers the device there,
// records the result durably and only then answers.
package provision
