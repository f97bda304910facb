// Package device provisions a device with a Device Provisioning Service —
// dpsd or Azure IoT Hub DPS — the way the Azure device SDKs do: it sends the
// register request over HTTPS, MQTT, MQTT over WebSockets, AMQP or AMQP over
// WebSockets, polls the
// operation until it is terminal, and returns the registration state.
//
// Only symmetric-key attestation is implemented: the device signs a SAS token
// with its own key, or with the key derived from its enrollment group key.
//
// A minimal use:
//
//	state, err := device.Register(ctx, device.Config{
//		ProvisioningHost: "dps.example.net",
//		IDScope:          "0ne00ABC123",
//		RegistrationID:   "my-device-01",
//		SymmetricKey:     key,
//	})
//
// Failures reported by the service (an error status, or a terminal "failed"
// or "disabled" registration) are returned as *Error, which carries the
// service's error code and message.
package device
