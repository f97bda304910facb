package admin

import "time"

// Hub describes a built-in hub for people and tools: the body of
// GET /dpsd/hubs/{name}.
type Hub struct {
	Name     string `json:"name"`
	HostName string `json:"hostName"`
	// Address is the IP address the hub is reached on: the address all
	// shared hubs have in common, or the hub's own.
	Address string `json:"address"`
	// Shared says the hub shares the node's endpoint (told apart from the
	// other hubs by TLS server name, MQTT user name or Host header)
	// rather than listening on an address of its own.
	Shared bool `json:"shared,omitempty"`
	// ConnectionString is the iothubowner connection string.
	ConnectionString string `json:"connectionString"`
	// EventHubConnectionString is the connection string of the hub's
	// Event Hubs-compatible endpoint for its telemetry, with the service
	// policy's key (Endpoint=sb://HOST[:PORT]/;…;EntityPath=NAME), served
	// on the hub's AMQP listener: the node's for a shared hub, its own
	// for a hub with an address of its own.
	EventHubConnectionString string `json:"eventHubConnectionString,omitempty"`
	// HostsLine makes HostName resolve when added to /etc/hosts.
	HostsLine string    `json:"hostsLine"`
	Created   time.Time `json:"created"`
	Running   bool      `json:"running"`
	// HTTPSAddr, MQTTAddr and AMQPAddr are where a running hub listens.
	HTTPSAddr string `json:"httpsAddr,omitempty"`
	MQTTAddr  string `json:"mqttAddr,omitempty"`
	AMQPAddr  string `json:"amqpAddr,omitempty"`
	// Error says why a hub is not running.
	Error string `json:"error,omitempty"`
}

// CreateHubRequest is the body of PUT /dpsd/hubs/{name}.
type CreateHubRequest struct {
	HostName string `json:"hostName,omitempty"`
	Address  string `json:"address,omitempty"`
}
