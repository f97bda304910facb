package cli

import (
	"crypto"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/client/device"
	"github.com/dpsd/dpsd/client/tpm"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/server"
)

func newDeviceCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device",
		Short: "Act as a device: provision a simulated device over HTTPS, MQTT, AMQP or either over WebSockets",
	}
	cmd.AddCommand(newDeviceProvisionCmd(), newDeviceEndorsementKeyCmd())
	return cmd
}

func newDeviceEndorsementKeyCmd() *cobra.Command {
	var tpmAddr string
	cmd := &cobra.Command{
		Use:   "endorsement-key",
		Short: "Print a TPM's endorsement key (base64 TPM2B_PUBLIC), to enroll it",
		Example: `  dpsd enrollment create --registration-id dev-1 --attestation-type tpm \
      --endorsement-key "$(dpsd device endorsement-key --tpm unix:/run/swtpm/cmd.sock)"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if tpmAddr == "" {
				return errors.New("--tpm is required")
			}
			dev, err := tpm.Open(tpmAddr)
			if err != nil {
				return fmt.Errorf("--tpm: %w", err)
			}
			defer dev.Close()
			fmt.Fprintln(cmd.OutOrStdout(), base64.StdEncoding.EncodeToString(dev.EndorsementKey()))
			return nil
		},
	}
	cmd.Flags().StringVar(&tpmAddr, "tpm", "", "the TPM: a device file (/dev/tpmrm0), unix:PATH or tcp:HOST:PORT of a software TPM")
	return cmd
}

// deviceFlags locate the device API: explicit flags first, then the
// info.json of a local dpsd's data directory.
type deviceFlags struct {
	idScope          string
	provisioningHost string
	dialAddr         string
	caFile           string
	dataDir          string
}

func (df *deviceFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&df.idScope, "id-scope", "", "ID scope of the provisioning service (default: from --data-dir)")
	fs.StringVar(&df.provisioningHost, "provisioning-host", "",
		"device endpoint host name, optionally with :port (default: the local dpsd of --data-dir; Azure's is "+device.DefaultProvisioningHost+")")
	fs.StringVar(&df.dialAddr, "dial-addr", "", "host:port to connect to instead of the provisioning host's address (TLS still checks the host name)")
	fs.StringVar(&df.caFile, "ca-file", "", "PEM file of a CA certificate to trust for the service's TLS")
	fs.StringVar(&df.dataDir, "data-dir", "",
		"data directory of a local dpsd, whose info.json gives the ID scope, host, CA and addresses; env "+envDataDir+" (default "+defaultDataDir+")")
}

// deviceTarget is the resolved device endpoint.
type deviceTarget struct {
	idScope   string
	host      string
	httpsDial string // DialAddr for HTTPS and MQTT over WebSockets
	mqttDial  string // DialAddr for MQTT
	amqpDial  string // DialAddr for AMQP
	roots     *x509.CertPool
	info      *admin.Info // nil when no data directory was read
}

// resolve fills in what the flags leave open from a dpsd data directory. A
// data directory named by flag must be readable; the default one is
// consulted when the ID scope or the provisioning host is missing. Without
// a provisioning host the device talks to the local dpsd, never to Azure's
// public endpoint by default: that takes --provisioning-host.
func (df *deviceFlags) resolve() (*deviceTarget, error) {
	t := &deviceTarget{idScope: df.idScope, host: df.provisioningHost, httpsDial: df.dialAddr, mqttDial: df.dialAddr, amqpDial: df.dialAddr}
	dir := df.dataDir
	if dir == "" {
		dir = os.Getenv(envDataDir)
	}
	if dir == "" && (t.idScope == "" || t.host == "") {
		dir = defaultDataDir
	}
	var caFiles []string
	if dir != "" {
		info, err := server.ReadInfo(dir)
		switch {
		case err != nil && df.dataDir != "":
			return nil, err
		case err != nil && t.idScope == "":
			return nil, fmt.Errorf("no ID scope: give --id-scope, or --data-dir of a running dpsd: %w", err)
		case err != nil && t.host == "":
			return nil, fmt.Errorf("no provisioning host: give --data-dir of a running dpsd, or --provisioning-host (%s for Azure): %w",
				device.DefaultProvisioningHost, err)
		case err == nil:
			t.info = info
			if t.idScope == "" {
				t.idScope = info.IDScope
			}
			// The listen addresses only describe this host when the
			// device talks to the dpsd of this data directory.
			if t.host == "" {
				t.host = info.HostName
				if t.httpsDial == "" {
					t.httpsDial, t.mqttDial = dialable(info.HTTPSAddr), dialable(info.MQTTAddr)
					if info.AMQPAddr != "" {
						t.amqpDial = dialable(info.AMQPAddr)
					}
				}
			}
			if info.CACertFile != "" {
				caFiles = append(caFiles, info.CACertFile)
			}
		}
	}
	if t.idScope == "" {
		return nil, errors.New("no ID scope: give --id-scope or --data-dir")
	}
	if df.caFile != "" {
		caFiles = append(caFiles, df.caFile)
	}
	if len(caFiles) > 0 {
		pool, err := localca.PoolWithFiles(nil, caFiles...)
		if err != nil {
			return nil, err
		}
		t.roots = pool
	}
	return t, nil
}

// config returns the device configuration for transport.
func (t *deviceTarget) config(tr device.Transport) device.Config {
	c := device.Config{
		ProvisioningHost: t.host,
		IDScope:          t.idScope,
		Transport:        tr,
		RootCAs:          t.roots,
		DialAddr:         t.httpsDial,
	}
	switch tr {
	case device.TransportMQTT:
		c.DialAddr = t.mqttDial
	case device.TransportAMQP:
		c.DialAddr = t.amqpDial
	}
	return c
}

func newDeviceProvisionCmd() *cobra.Command {
	var (
		df                                deviceFlags
		regID, key, groupKey, payload, tr string
		certFile, keyFile, tpmAddr        string
		apiVersion                        string
		csr                               bool
		csrFile, csrKeyFile               string
		issuedCertOut, issuedKeyOut       string
		timeout                           time.Duration
	)
	cmd := &cobra.Command{
		Use:   "provision",
		Short: "Register a device (symmetric key, X.509 or TPM) and print its assigned hub",
		Long: `Register one device the way the Azure device SDKs do: send the register
request, poll the operation until it ends and print the assigned hub and
device ID, with progress lines like the Azure IoT C SDK sample.

The device proves itself with --symmetric-key (an individual enrollment's
key, or an already derived group member key), with a key derived from
--group-key and the registration ID, or with an X.509 certificate:
--certificate (the device certificate followed by its intermediates, e.g.
the -full-chain file of "dpsd cert device") and --key. With a certificate,
the registration ID defaults to its subject CN. With --tpm the device
attests with a TPM 2.0 (an individual TPM enrollment, over https, amqp or
amqp-ws): a device
file such as /dev/tpmrm0, or a software TPM's raw command socket as
unix:PATH or tcp:HOST:PORT (swtpm socket --server type=unixio or type=tcp);
"dpsd device endorsement-key" prints the key to enroll.

With --csr the device also asks for an operational certificate (Azure's
2025-07-01-preview certificate issuance; its enrollment must name an issuing
CA in clientCertificateIssuancePolicy): a new ECDSA P-256 key and a
certificate signing request for the registration ID are made, or
--csr-file and --csr-key-file give them. The issued chain (leaf first) is
written to --issued-cert-out and a generated key to --issued-key-out; the
device then connects to its hub with that pair.

Exit status: 0 when assigned, 1 on any failure (the Azure error code is
printed).`,
		Example: `  dpsd device provision --data-dir ./dpsd-data --registration-id breakroom499-contoso-tstrsd-007 \
      --group-key "$GROUP_KEY" --transport mqtt \
      --payload '{"MyDeviceFirmwareVersion":"12.0.2.5","MyDeviceProvisioningVersion":"1.0.0.0"}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := outputJSON(cmd)
			if err != nil {
				return err
			}
			proofs := 0
			for _, v := range []string{key, groupKey, certFile, tpmAddr} {
				if v != "" {
					proofs++
				}
			}
			if proofs != 1 {
				return errors.New("give exactly one of --symmetric-key, --group-key, --certificate and --tpm")
			}
			var cert *tls.Certificate
			if certFile != "" {
				if keyFile == "" {
					return errors.New("--certificate needs --key, the certificate's private key")
				}
				c, err := tls.LoadX509KeyPair(certFile, keyFile)
				if err != nil {
					return fmt.Errorf("--certificate/--key: %w", err)
				}
				if regID == "" {
					leaf, err := x509.ParseCertificate(c.Certificate[0])
					if err != nil {
						return fmt.Errorf("--certificate: %w", err)
					}
					regID = leaf.Subject.CommonName
				}
				cert = &c
			}
			if regID == "" {
				return errors.New("--registration-id is required")
			}
			var raw json.RawMessage
			if payload != "" {
				if !json.Valid([]byte(payload)) {
					return errors.New("--payload is not valid JSON")
				}
				raw = json.RawMessage(payload)
			}
			t, err := df.resolve()
			if err != nil {
				return err
			}
			cfg := t.config(device.Transport(tr))
			cfg.RegistrationID = regID
			cfg.SymmetricKey = key
			cfg.GroupKey = groupKey
			cfg.Certificate = cert
			if tpmAddr != "" {
				dev, err := tpm.Open(tpmAddr)
				if err != nil {
					return fmt.Errorf("--tpm: %w", err)
				}
				defer dev.Close()
				cfg.TPM = dev
			}
			cfg.Payload = raw
			cfg.APIVersion = apiVersion
			cfg.Timeout = timeout
			var csrKey crypto.Signer
			generatedKey := false
			if csr || csrFile != "" {
				if cfg.CSR, csrKey, generatedKey, err = loadOrMakeCSR(regID, csrFile, csrKeyFile); err != nil {
					return err
				}
				if !cmd.Flags().Changed("api-version") {
					cfg.APIVersion = device.CSRAPIVersion
				}
				if issuedCertOut == "" {
					issuedCertOut = regID + "-issued.cert.pem"
				}
				if issuedKeyOut == "" {
					issuedKeyOut = regID + "-issued.key.pem"
				}
			}

			out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()
			if !asJSON {
				cfg.Progress = progressPrinter(out)
				fmt.Fprintf(out, "Provisioning API Version: %s\n", orString(cfg.APIVersion, device.DefaultAPIVersion))
				fmt.Fprintf(out, "Registering Device\n\n")
			}
			state, err := device.Register(cmd.Context(), cfg)
			if err != nil {
				printProvisionFailure(errOut, err)
				return &exitError{code: 1}
			}
			if len(cfg.CSR) > 0 {
				if err := writeIssued(state, csrKey, generatedKey, issuedCertOut, issuedKeyOut); err != nil {
					return err
				}
			}
			if asJSON {
				return writeJSON(out, state)
			}
			fmt.Fprintf(out, "Registration Information received from service: %s, deviceId: %s\n", state.AssignedHub, state.DeviceID)
			if ic := state.IssuedCertificate; ic != nil && len(cfg.CSR) > 0 {
				fmt.Fprintf(out, "Issued certificate: serial %s, SHA-256 %s, valid until %s, by CA %q\n",
					ic.SerialNumber, ic.SHA256Thumbprint, ic.NotAfterUTC.Format(time.RFC3339), ic.CertificateAuthorityName)
				fmt.Fprintf(out, "Issued certificate chain written to %s", issuedCertOut)
				if generatedKey {
					fmt.Fprintf(out, ", its key to %s", issuedKeyOut)
				}
				fmt.Fprintln(out)
			}
			if len(state.Payload) > 0 && string(state.Payload) != "null" {
				fmt.Fprintf(out, "Provisioning payload received from service: %s\n", compactJSON(state.Payload))
			}
			return nil
		},
	}
	f := cmd.Flags()
	df.register(f)
	f.StringVar(&regID, "registration-id", "", "the device's registration ID (with --certificate: its subject CN by default)")
	f.StringVar(&key, "symmetric-key", "", "the device's own base64 symmetric key")
	f.StringVar(&groupKey, "group-key", "", "base64 key of the device's enrollment group; the device key is derived from it")
	f.StringVar(&certFile, "certificate", "", "PEM file of the device certificate and its intermediates, for X.509 attestation")
	f.StringVar(&keyFile, "key", "", "PEM file of the --certificate's private key")
	f.StringVar(&tpmAddr, "tpm", "", "the device's TPM, for TPM attestation: a device file (/dev/tpmrm0), unix:PATH or tcp:HOST:PORT of a software TPM")
	f.StringVar(&tr, "transport", string(device.TransportHTTPS), "https, mqtt, mqtt-ws, amqp or amqp-ws")
	f.StringVar(&payload, "payload", "", "custom JSON payload sent with the registration (for custom allocation)")
	f.StringVar(&apiVersion, "api-version", device.DefaultAPIVersion, "api-version sent to the service (with --csr: "+device.CSRAPIVersion+")")
	f.BoolVar(&csr, "csr", false, "ask for an issued certificate: generate an ECDSA P-256 key and a certificate signing request for the registration ID")
	f.StringVar(&csrFile, "csr-file", "", "ask for an issued certificate with this certificate signing request (PEM or DER); needs --csr-key-file")
	f.StringVar(&csrKeyFile, "csr-key-file", "", "PEM file of the --csr-file's private key")
	f.StringVar(&issuedCertOut, "issued-cert-out", "", "where to write the issued certificate chain, PEM, leaf first (default REGID-issued.cert.pem)")
	f.StringVar(&issuedKeyOut, "issued-key-out", "", "where to write the generated private key, PEM (default REGID-issued.key.pem)")
	f.DurationVar(&timeout, "timeout", device.DefaultTimeout, "give up after this long")
	f.StringP("output", "o", formatTable, "output format: table (progress lines) or json (the registration state)")
	return cmd
}

// outputJSON reads -o of a command that defines it locally.
func outputJSON(cmd *cobra.Command) (bool, error) {
	v, err := cmd.Flags().GetString("output")
	if err != nil {
		return false, err
	}
	return (&outputFlags{format: v}).json()
}

// progressPrinter prints the status lines the Azure IoT C SDK sample prints
// from its registration status callback.
func progressPrinter(w io.Writer) func(device.Event) {
	return func(e device.Event) {
		switch e.Kind {
		case device.EventConnected, device.EventAssigning:
			fmt.Fprintf(w, "Provisioning Status: %s\n", e.Kind)
		}
	}
}

// printProvisionFailure explains a failed registration, with the Azure
// error code when the service sent one.
func printProvisionFailure(w io.Writer, err error) {
	var de *device.Error
	if !errors.As(err, &de) {
		fmt.Fprintf(w, "Failure registering device: %v\n", err)
		return
	}
	switch {
	case de.Status != "":
		fmt.Fprintf(w, "Failure registering device: registration %s", de.Status)
	default:
		fmt.Fprintf(w, "Failure registering device: %s answered %d", de.Op, de.StatusCode)
	}
	if de.Detail.ErrorCode != 0 {
		fmt.Fprintf(w, ", errorCode %d", de.Detail.ErrorCode)
	}
	if de.Detail.Message != "" {
		fmt.Fprintf(w, ": %s", de.Detail.Message)
	}
	fmt.Fprintln(w)
	if de.Detail.TrackingID != "" {
		fmt.Fprintf(w, "Tracking ID: %s\n", de.Detail.TrackingID)
	}
	if de.Temporary() && de.RetryAfter > 0 {
		fmt.Fprintf(w, "The service asks to retry after %v.\n", de.RetryAfter)
	}
}

func orString(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
