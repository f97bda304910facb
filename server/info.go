package server

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// InfoFile is the file in the data directory where a running dpsd leaves
// the facts clients need. It holds the owner policy's key, so it is written
// with mode 0600.
const InfoFile = "info.json"

// Info is what "dpsd serve" prints on start and "dpsd info" shows.
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

// WriteInfo writes info to dataDir atomically.
func WriteInfo(dataDir string, info *Info) error {
	data, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(dataDir, InfoFile+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", InfoFile, err)
	}
	return os.Rename(tmp, filepath.Join(dataDir, InfoFile))
}

// ReadInfo reads the info a dpsd left in dataDir.
func ReadInfo(dataDir string) (*Info, error) {
	data, err := os.ReadFile(filepath.Join(dataDir, InfoFile))
	if err != nil {
		return nil, fmt.Errorf("read dpsd info (has \"dpsd serve --data-dir %s\" run?): %w", dataDir, err)
	}
	var info Info
	if err := json.Unmarshal(data, &info); err != nil {
		return nil, fmt.Errorf("read %s: %w", InfoFile, err)
	}
	return &info, nil
}
