package admin

// Info is what "dpsd serve" prints (and leaves in info.json) on start and "dpsd info" shows.
type Info struct {
	IDScope                 string `json:"idScope"`
	ServiceConnectionString string `json:"serviceConnectionString"`
	CACertFile              string `json:"caCertFile"`
	HTTPSEndpoint           string `json:"httpsEndpoint"`
	MQTTEndpoint            string `json:"mqttEndpoint"`
	AMQPEndpoint            string `json:"amqpEndpoint,omitempty"`
	// HostName is the name clients use for the service (also the SAS sr of
	// the service API); HTTPSAddr is the address it listens on, which a
	// client may dial when HostName does not resolve to it.
	HostName  string `json:"hostName"`
	HTTPSAddr string `json:"httpsAddr"`
	MQTTAddr  string `json:"mqttAddr"`
	AMQPAddr  string `json:"amqpAddr,omitempty"`
}
