// Package wsconn carries MQTT over WebSockets (MQTT 3.1.1 §6) for the
// brokers and clients of dpsd: the server side of the upgrade with the
// "mqtt" subprotocol, and a net.Conn over a WebSocket, so that code speaking
// MQTT over a byte stream needs to know nothing of frames. AMQP over
// WebSockets ("AMQPWSB10") uses the same byte stream.
//
// It is the one package transports share (the dependency test allows it
// and nothing else): any protocol carried over WebSocket binary frames can
// use NewConn.
package wsconn
