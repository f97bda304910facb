// Command dpsd is a self-hosted device provisioning service, wire-compatible
// with Azure IoT Hub DPS, and the command-line client for it.
package main

import (
	"os"

	"github.com/dpsd/dpsd/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
