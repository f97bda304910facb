package e2e

import "testing"

// The AMQP suites run their servers on 127.0.7.N (amqpPrefix), apart from
// the other suites' 127.0.3.N.
const amqpPrefix = "127.0.7"

func TestDeviceSDKAMQP(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	runNodeTests(t, startServerIn(t, amqpPrefix), "device-amqp.test.js")
}

func TestDeviceSDKAMQPWebSockets(t *testing.T) {
	t.Parallel()
	nodeTool(t)
	runNodeTests(t, startServerIn(t, amqpPrefix), "device-amqpws.test.js")
}
