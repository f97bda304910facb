// Package azurehub speaks the Azure IoT hub service REST API (device
// identities and twins, api-version 2021-04-12): its wire types, the Registry
// interface that every hub dpsd registers devices in implements, and a small
// REST client (Client) for a real Azure IoT hub.
//
// It is a leaf: it knows nothing of provisioning, so the built-in hubs
// (package builtinhub), which serve this same API, can share its types
// without linking the engine.
package azurehub
