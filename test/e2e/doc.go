// Package e2e holds end-to-end conformance tests: it builds dpsd, starts
// "dpsd serve" on a loopback address of its own (standard ports 443 and 8883,
// which the Azure SDKs hard-code), and drives it with the official Azure IoT
// Node.js SDKs from test/sdk (node's built-in test runner).
//
// Prerequisites: Node.js and test/sdk/node_modules, both installed by
// scripts/install-test-deps.sh. Without node the tests skip, except in CI
// (CI set), where missing prerequisites fail. Binding port 443 needs root or
// CAP_NET_BIND_SERVICE.
//
// Environment:
//
//	DPSD_E2E_NODE_TIMEOUT  bound for one node test file (Go duration, default 6m)
//	DPSD_E2E_KEEP=1        keep the server's data directories and logs
//	DPSD_TEST_HUB          IoT hub host name the enrollments ask for (static allocation)
package e2e
