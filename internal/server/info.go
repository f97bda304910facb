package server

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dpsd/dpsd/api/admin"
)

// InfoFile is the file in the data directory where a running dpsd leaves
// the facts clients need. It holds the owner policy's key, so it is written
// with mode 0600.
const InfoFile = "info.json"

// Info is the wire form of the node facts, defined in api/admin.
type Info = admin.Info

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
