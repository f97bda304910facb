package sas

import (
	"encoding/base64"
	"fmt"
	"strings"
)

// ConnectionString is the parsed form of
// "HostName=...;SharedAccessKeyName=...;SharedAccessKey=..." (service policy)
// or "HostName=...;DeviceId=...;SharedAccessKey=..." (device).
type ConnectionString struct {
	HostName            string
	SharedAccessKeyName string
	SharedAccessKey     string
	DeviceID            string
	GatewayHostName     string
}

// ParseConnectionString splits on ';' and the first '=' of each part, as the
// Azure SDKs do, and requires HostName and a base64 SharedAccessKey.
func ParseConnectionString(s string) (*ConnectionString, error) {
	var cs ConnectionString
	for part := range strings.SplitSeq(strings.TrimSpace(s), ";") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("connection string: part %q has no '='", k)
		}
		switch strings.ToLower(strings.TrimSpace(k)) {
		case "hostname":
			cs.HostName = v
		case "sharedaccesskeyname":
			cs.SharedAccessKeyName = v
		case "sharedaccesskey":
			cs.SharedAccessKey = v
		case "deviceid":
			cs.DeviceID = v
		case "gatewayhostname":
			cs.GatewayHostName = v
		}
	}
	if cs.HostName == "" {
		return nil, fmt.Errorf("connection string: HostName is missing")
	}
	if cs.SharedAccessKey == "" {
		return nil, fmt.Errorf("connection string: SharedAccessKey is missing")
	}
	if _, err := base64.StdEncoding.DecodeString(cs.SharedAccessKey); err != nil {
		return nil, fmt.Errorf("connection string: SharedAccessKey is not base64: %w", err)
	}
	return &cs, nil
}

// String formats the connection string in the order Azure prints it.
func (cs *ConnectionString) String() string {
	var b strings.Builder
	b.WriteString("HostName=" + cs.HostName)
	if cs.DeviceID != "" {
		b.WriteString(";DeviceId=" + cs.DeviceID)
	}
	if cs.SharedAccessKeyName != "" {
		b.WriteString(";SharedAccessKeyName=" + cs.SharedAccessKeyName)
	}
	b.WriteString(";SharedAccessKey=" + cs.SharedAccessKey)
	if cs.GatewayHostName != "" {
		b.WriteString(";GatewayHostName=" + cs.GatewayHostName)
	}
	return b.String()
}

// Redacted is String with the key replaced by "****", for logs and listings.
func (cs *ConnectionString) Redacted() string {
	c := *cs
	c.SharedAccessKey = "****"
	return c.String()
}
