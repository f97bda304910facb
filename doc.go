// Package dpsd is a self-hosted device provisioning service, wire-compatible
// with Azure IoT Hub DPS. This package holds no code: it is the map of the
// tree, and its test pins the dependency rules that keep the map true.
//
//	cmd/dpsd                  main only: calls internal/cli
//	api/dps                   Azure DPS wire types the SDKs see, and the error catalogue
//	api/admin                 wire types of dpsd's own endpoints (/dpsd/...) and info.json
//	                          (api/ imports nothing of dpsd)
//	client/device, /service   Go clients of the device API and the service API
//	internal/provision        the engine: attest, allocate, register in the hub, record, answer
//	internal/transport/...    how requests arrive: https, mqtt, wsconn, serviceapi; none imports another
//	internal/hub              the engine's registrar: devices into their IoT hub
//	internal/hub/azurehub     the Azure IoT hub REST types and client; a leaf
//	internal/hub/builtinhub   the IoT hubs dpsd serves itself; does not link the engine
//	internal/store/...        the storage interface, sqlite, postgres, the conformance suite
//	internal/server           one dpsd node: configuration, listeners, routing, shutdown
//	internal/console          the web console at /console/; reaches the node through its HTTP handlers
//	internal/cli              the command line
//	test/...                  end-to-end suites: e2e, sdk (official Node SDKs), multinode, console (Chromium)
//
// A newcomer reads internal/provision first (engine.go), then one transport
// (internal/transport/https), then internal/server, which wires them.
package dpsd
