package cli

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/sas"
	"github.com/dpsd/dpsd/internal/server"
)

// Environment variables the client commands read when the matching flag is
// not given.
const (
	envConnectionString = "DPSD_CONNECTION_STRING"
	envDataDir          = "DPSD_DATA_DIR"
)

// defaultDataDir is where "dpsd serve" keeps its data unless told otherwise,
// so a client run next to it finds the service with no flags at all.
const defaultDataDir = "./dpsd-data"

// connectFlags are the flags every command that talks to the service API
// shares.
type connectFlags struct {
	connectionString string
	dataDir          string
	caFile           string
}

// addConnectFlags registers the connection flags as persistent flags of cmd
// so that all its subcommands accept them.
func addConnectFlags(cmd *cobra.Command) *connectFlags {
	cf := &connectFlags{}
	fs := cmd.PersistentFlags()
	fs.StringVar(&cf.connectionString, "connection-string", "",
		"service connection string (HostName=...;SharedAccessKeyName=...;SharedAccessKey=...); env "+envConnectionString)
	fs.StringVar(&cf.dataDir, "data-dir", "",
		"data directory of a local dpsd, whose info.json names the service, its CA and address; env "+envDataDir+" (default "+defaultDataDir+")")
	fs.StringVar(&cf.caFile, "ca-file", "", "PEM file of a CA certificate to trust for the service's TLS")
	return cf
}

// target is where and how to reach the service.
type target struct {
	connectionString string
	caFiles          []string
	dialAddr         string
}

// resolve decides where the service is. A connection string (flag, then
// environment) supplies the credentials; a data directory (flag, then
// environment, then the default when no connection string is given)
// supplies the connection string if needed, the local CA and the address to
// dial. With both, the data directory only counts when it describes the
// same host as the connection string, so a DPSD_DATA_DIR left in the
// environment does not redirect a connection string meant for elsewhere.
func (cf *connectFlags) resolve() (*target, error) {
	t := &target{connectionString: cf.connectionString}
	if t.connectionString == "" {
		t.connectionString = os.Getenv(envConnectionString)
	}
	dir := cf.dataDir
	if dir == "" {
		dir = os.Getenv(envDataDir)
	}
	if dir == "" && t.connectionString == "" {
		dir = defaultDataDir
	}
	if dir != "" {
		info, err := server.ReadInfo(dir)
		switch {
		case err != nil && t.connectionString == "":
			return nil, fmt.Errorf("no service to talk to: give --connection-string (or %s), or --data-dir of a running dpsd: %w",
				envConnectionString, err)
		case err != nil && cf.dataDir != "":
			return nil, err
		case err != nil:
			// A data directory from the environment that holds no
			// info.json is ignored next to a connection string.
		case t.connectionString == "":
			t.connectionString = info.ServiceConnectionString
			t.useInfo(info)
		case sameHost(t.connectionString, info.ServiceConnectionString):
			t.useInfo(info)
		}
	}
	if cf.caFile != "" {
		t.caFiles = append(t.caFiles, cf.caFile)
	}
	if t.connectionString == "" {
		return nil, errors.New("no service connection string")
	}
	return t, nil
}

func (t *target) useInfo(info *admin.Info) {
	if info.CACertFile != "" {
		t.caFiles = append(t.caFiles, info.CACertFile)
	}
	t.dialAddr = dialable(info.HTTPSAddr)
}

// sameHost reports whether two connection strings name the same host.
func sameHost(a, b string) bool {
	ca, err := sas.ParseConnectionString(a)
	if err != nil {
		return false
	}
	cb, err := sas.ParseConnectionString(b)
	if err != nil {
		return false
	}
	return strings.EqualFold(ca.HostName, cb.HostName)
}

// client builds a service client for the resolved target.
func (cf *connectFlags) client() (*service.Client, error) {
	t, err := cf.resolve()
	if err != nil {
		return nil, err
	}
	opts := []service.Option{service.WithUserAgent("dpsd-cli/1.0")}
	for _, f := range t.caFiles {
		opts = append(opts, service.WithCAFile(f))
	}
	if t.dialAddr != "" {
		opts = append(opts, service.WithDialAddr(t.dialAddr))
	}
	return service.New(t.connectionString, opts...)
}

// dialable turns a listen address into one a client can connect to: a
// wildcard host ("", 0.0.0.0, ::) means the local machine.
func dialable(listen string) string {
	if listen == "" {
		return ""
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}
