package cli

import (
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/localca"
	"github.com/dpsd/dpsd/internal/sas"
)

// hubREST connects to a built-in hub's own service REST API, as
// "az iot hub" does to an Azure hub: with the hub's iothubowner connection
// string (from dpsd's management API), dialling the address the hub
// serves on while the host name goes into TLS, the Host header and the
// token — so the host name need not resolve.
func (cc *clientCmd) hubREST(cmd *cobra.Command, name string) (*azurehub.Client, *sas.ConnectionString, bool, error) {
	c, asJSON, err := cc.adminClient()
	if err != nil {
		return nil, nil, false, err
	}
	in, err := c.Show(cmd.Context(), name)
	if err != nil {
		return nil, nil, false, err
	}
	if !in.Running {
		return nil, nil, false, fmt.Errorf("hub %s is not running: %s", name, in.Error)
	}
	cs, err := sas.ParseConnectionString(in.ConnectionString)
	if err != nil {
		return nil, nil, false, fmt.Errorf("hub %s: connection string: %w", name, err)
	}
	t, err := cc.conn.resolve()
	if err != nil {
		return nil, nil, false, err
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if pool, err = localca.PoolWithFiles(pool, t.caFiles...); err != nil {
		return nil, nil, false, err
	}
	hc, err := azurehub.NewClient(cs, azurehub.WithRootCAs(pool), azurehub.WithDialAddr(dialable(in.HTTPSAddr)), azurehub.WithRetry(1, 0))
	if err != nil {
		return nil, nil, false, err
	}
	return hc, cs, asJSON, nil
}

func hubDeviceIdentityCmd(cc *clientCmd) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "device-identity",
		Short: "Manage the device identities of a built-in hub (as az iot hub device-identity)",
		Args:  cobra.NoArgs,
	}
	list := hubDeviceListCmd(cc)
	show := hubDeviceShowCmd(cc)
	cs := &cobra.Command{Use: "connection-string", Short: "Device connection strings", Args: cobra.NoArgs}
	cs.AddCommand(hubDeviceConnectionStringCmd(cc))
	cmd.AddCommand(hubDeviceCreateCmd(cc), show, list, hubDeviceUpdateCmd(cc), hubDeviceDeleteCmd(cc), cs)
	return cmd
}

// deviceAuthFlags are the authentication flags of device-identity create
// and update, spelled as az spells them.
type deviceAuthFlags struct {
	method             string
	primary, secondary string
	ptp, stp           string
}

func (f *deviceAuthFlags) add(cmd *cobra.Command, withDefault bool) {
	def := ""
	if withDefault {
		def = "shared_private_key"
	}
	fs := cmd.Flags()
	fs.StringVar(&f.method, "auth-method", def, "shared_private_key, x509_thumbprint or x509_ca")
	fs.StringVar(&f.primary, "primary-key", "", "base64 primary key (shared_private_key; default: generated)")
	fs.StringVar(&f.secondary, "secondary-key", "", "base64 secondary key (shared_private_key; default: generated)")
	fs.StringVar(&f.ptp, "primary-thumbprint", "", "primary certificate thumbprint (x509_thumbprint)")
	fs.StringVar(&f.stp, "secondary-thumbprint", "", "secondary certificate thumbprint (x509_thumbprint)")
}

// authentication is the device's authentication the flags describe, nil
// when they say nothing.
func (f *deviceAuthFlags) authentication() (*azurehub.Authentication, error) {
	switch f.method {
	case "":
		if f.primary != "" || f.secondary != "" {
			return &azurehub.Authentication{Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: f.primary, SecondaryKey: f.secondary}}, nil
		}
		return nil, nil
	case "shared_private_key":
		return &azurehub.Authentication{Type: azurehub.AuthSAS, SymmetricKey: &azurehub.SymmetricKey{PrimaryKey: f.primary, SecondaryKey: f.secondary}}, nil
	case "x509_thumbprint":
		if f.ptp == "" {
			return nil, errors.New("--auth-method x509_thumbprint needs --primary-thumbprint")
		}
		stp := f.stp
		if stp == "" {
			stp = f.ptp
		}
		return &azurehub.Authentication{Type: azurehub.AuthSelfSigned, X509Thumbprint: &azurehub.X509Thumbprint{PrimaryThumbprint: &f.ptp, SecondaryThumbprint: &stp}}, nil
	case "x509_ca":
		return &azurehub.Authentication{Type: azurehub.AuthCertificateAuthority}, nil
	}
	return nil, fmt.Errorf("--auth-method must be shared_private_key, x509_thumbprint or x509_ca, not %q", f.method)
}

func hubDeviceCreateCmd(cc *clientCmd) *cobra.Command {
	var name, id, status string
	var edge bool
	var auth deviceAuthFlags
	cmd := &cobra.Command{
		Use:     "create",
		Short:   "Create a device identity",
		Example: `  dpsd hub device-identity create -n contoso-toasters-hub-1098 -d toaster-42`,
		Args:    cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	auth.add(cmd, true)
	cmd.Flags().StringVar(&status, "status", azurehub.StatusEnabled, "enabled or disabled")
	cmd.Flags().BoolVar(&edge, "edge-enabled", false, "an IoT Edge device")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		a, err := auth.authentication()
		if err != nil {
			return err
		}
		if status != azurehub.StatusEnabled && status != azurehub.StatusDisabled {
			return fmt.Errorf("--status must be enabled or disabled, not %q", status)
		}
		hc, _, asJSON, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		d := &azurehub.Device{DeviceID: id, Status: status, Authentication: a}
		if edge {
			d.Capabilities = &azurehub.Capabilities{IoTEdge: true}
		}
		out, err := hc.CreateDevice(cmd.Context(), d)
		if err != nil {
			return err
		}
		return printDevice(cmd, out, asJSON)
	}
	return cmd
}

func printDevice(cmd *cobra.Command, d *azurehub.Device, asJSON bool) error {
	if asJSON {
		return writeJSON(cmd.OutOrStdout(), d)
	}
	fields := []field{{"Device ID", d.DeviceID}, {"Status", d.Status}, {"ETag", d.ETag}}
	if a := d.Authentication; a != nil {
		fields = append(fields, field{"Authentication", a.Type})
		if k := a.SymmetricKey; k != nil {
			fields = append(fields, field{"Primary key", k.PrimaryKey}, field{"Secondary key", k.SecondaryKey})
		}
	}
	return details(cmd.OutOrStdout(), fields)
}

func hubDeviceUpdateCmd(cc *clientCmd) *cobra.Command {
	var name, id, status, etag string
	var auth deviceAuthFlags
	cmd := &cobra.Command{
		Use:     "update",
		Short:   "Update a device identity: its status or its credentials",
		Example: `  dpsd hub device-identity update -n contoso-toasters-hub-1098 -d toaster-42 --status disabled`,
		Args:    cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	auth.add(cmd, false)
	cmd.Flags().StringVar(&status, "status", "", "enabled or disabled")
	cmd.Flags().StringVar(&etag, "etag", "", "only if the device still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		a, err := auth.authentication()
		if err != nil {
			return err
		}
		if status != "" && status != azurehub.StatusEnabled && status != azurehub.StatusDisabled {
			return fmt.Errorf("--status must be enabled or disabled, not %q", status)
		}
		if a == nil && status == "" {
			return errors.New("nothing to update: give --status or authentication flags")
		}
		hc, _, asJSON, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		d, err := hc.GetDevice(cmd.Context(), id)
		if err != nil {
			return err
		}
		if status != "" {
			d.Status = status
		}
		if a != nil {
			d.Authentication = a
		}
		out, err := hc.UpdateDevice(cmd.Context(), d, cmpOr(etag, d.ETag))
		if err != nil {
			return err
		}
		return printDevice(cmd, out, asJSON)
	}
	return cmd
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

func hubDeviceDeleteCmd(cc *clientCmd) *cobra.Command {
	var name, id, etag string
	cmd := &cobra.Command{Use: "delete", Short: "Delete a device identity with its twin", Args: cobra.NoArgs}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	cmd.Flags().StringVar(&etag, "etag", "", "only if the device still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		hc, _, _, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		return hc.DeleteDevice(cmd.Context(), id, etag)
	}
	return cmd
}

func hubDeviceConnectionStringCmd(cc *clientCmd) *cobra.Command {
	var name, id, keyType string
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show a device's connection string",
		Long: `Print the connection string a device uses to connect to the hub with the
Azure device SDKs. The hub's host name must resolve ("dpsd hub hosts-line"),
or add ;GatewayHostName=<dpsd's address> to it.`,
		Args: cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	cmd.Flags().StringVar(&keyType, "key-type", "primary", "primary or secondary")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if keyType != "primary" && keyType != "secondary" {
			return fmt.Errorf("--key-type must be primary or secondary, not %q", keyType)
		}
		hc, hubCS, asJSON, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		d, err := hc.GetDevice(cmd.Context(), id)
		if err != nil {
			return err
		}
		var s string
		switch {
		case d.Authentication != nil && d.Authentication.SymmetricKey != nil:
			key := d.Authentication.SymmetricKey.PrimaryKey
			if keyType == "secondary" {
				key = d.Authentication.SymmetricKey.SecondaryKey
			}
			s = "HostName=" + hubCS.HostName + ";DeviceId=" + id + ";SharedAccessKey=" + key
		default:
			s = "HostName=" + hubCS.HostName + ";DeviceId=" + id + ";x509=true"
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), map[string]string{"connectionString": s})
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), s)
		return err
	}
	return cmd
}

func hubDeviceTwinCmd(cc *clientCmd) *cobra.Command {
	cmd := &cobra.Command{Use: "device-twin", Short: "Show and change device twins of a built-in hub (as az iot hub device-twin)", Args: cobra.NoArgs}
	cmd.AddCommand(hubTwinShowCmd(cc), hubTwinUpdateCmd(cc), hubTwinReplaceCmd(cc))
	return cmd
}

// jsonArg reads a JSON flag value: the JSON itself, or @file.
func jsonArg(flag, v string, out any) error {
	data := []byte(v)
	if name, ok := strings.CutPrefix(v, "@"); ok {
		var err error
		if data, err = os.ReadFile(name); err != nil {
			return fmt.Errorf("--%s: %w", flag, err)
		}
	}
	dec := json.NewDecoder(strings.NewReader(string(data)))
	dec.UseNumber()
	if err := dec.Decode(out); err != nil {
		return fmt.Errorf("--%s is not JSON: %w", flag, err)
	}
	return nil
}

func hubTwinUpdateCmd(cc *clientCmd) *cobra.Command {
	var name, id, desired, tags, etag string
	cmd := &cobra.Command{
		Use:     "update",
		Short:   "Merge desired properties and tags into a device twin",
		Example: `  dpsd hub device-twin update -n contoso-toasters-hub-1098 -d toaster-42 --desired '{"darkness":"high"}' --tags '{"site":"hall"}'`,
		Args:    cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	cmd.Flags().StringVar(&desired, "desired", "", "desired properties to merge (JSON, or @file)")
	cmd.Flags().StringVar(&tags, "tags", "", "tags to merge (JSON, or @file)")
	cmd.Flags().StringVar(&etag, "etag", "", "only if the twin still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if desired == "" && tags == "" {
			return errors.New("nothing to update: give --desired or --tags")
		}
		patch := &azurehub.Twin{}
		if desired != "" {
			patch.Properties = &azurehub.TwinProperties{}
			if err := jsonArg("desired", desired, &patch.Properties.Desired); err != nil {
				return err
			}
		}
		if tags != "" {
			if err := jsonArg("tags", tags, &patch.Tags); err != nil {
				return err
			}
		}
		hc, _, _, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		t, err := hc.UpdateTwin(cmd.Context(), id, patch, etag)
		if err != nil {
			return err
		}
		return writeJSON(cmd.OutOrStdout(), t)
	}
	return cmd
}

func hubTwinReplaceCmd(cc *clientCmd) *cobra.Command {
	var name, id, in, etag string
	cmd := &cobra.Command{
		Use:   "replace",
		Short: "Replace a device twin's tags and desired properties",
		Args:  cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	cmd.Flags().StringVar(&in, "json", "", "the twin (JSON, or @file): its tags and properties.desired count")
	cmd.Flags().StringVar(&etag, "etag", "", "only if the twin still has this etag")
	_ = cmd.MarkFlagRequired("json")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var t azurehub.Twin
		if err := jsonArg("json", in, &t); err != nil {
			return err
		}
		hc, _, _, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		out, err := hc.ReplaceTwin(cmd.Context(), id, &t, etag)
		if err != nil {
			return err
		}
		return writeJSON(cmd.OutOrStdout(), out)
	}
	return cmd
}

func hubInvokeMethodCmd(cc *clientCmd) *cobra.Command {
	var name, id, method, payload string
	var timeout int
	cmd := &cobra.Command{
		Use:     "invoke-device-method",
		Short:   "Call a direct method on a connected device and print its answer",
		Example: `  dpsd hub invoke-device-method -n contoso-toasters-hub-1098 -d toaster-42 --method-name reboot --method-payload '{"delay":5}'`,
		Args:    cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	cmd.Flags().StringVar(&method, "method-name", "", "name of the method")
	cmd.Flags().StringVar(&payload, "method-payload", "{}", "payload (JSON, or @file)")
	cmd.Flags().IntVar(&timeout, "timeout", 30, "seconds to wait for the device's answer (5 to 300)")
	_ = cmd.MarkFlagRequired("method-name")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if timeout < 5 || timeout > 300 {
			return fmt.Errorf("--timeout must be 5 to 300 seconds, not %d", timeout)
		}
		var p json.RawMessage
		if err := jsonArg("method-payload", payload, &p); err != nil {
			return err
		}
		hc, _, _, err := cc.hubREST(cmd, name)
		if err != nil {
			return err
		}
		res, err := hc.InvokeMethod(cmd.Context(), id, &azurehub.MethodRequest{MethodName: method, Payload: p, ResponseTimeoutInSeconds: timeout})
		if err != nil {
			return err
		}
		return writeJSON(cmd.OutOrStdout(), res)
	}
	return cmd
}

func hubGenerateSASCmd(cc *clientCmd) *cobra.Command {
	var name, id, policy, keyType string
	var duration time.Duration
	cmd := &cobra.Command{
		Use:   "generate-sas-token",
		Short: "Generate a SAS token for a built-in hub or one of its devices",
		Long: `Print a shared access signature: with --device-id, one a device connects with
(signed with its key); otherwise one for the hub's service API, signed with a
shared access policy of the hub (--policy-name, default iothubowner).`,
		Example: `  dpsd hub generate-sas-token -n contoso-toasters-hub-1098 -d toaster-42 --duration 1h`,
		Args:    cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	cmd.Flags().StringVarP(&id, "device-id", "d", "", "a token for this device")
	cmd.Flags().StringVar(&policy, "policy-name", "iothubowner", "the hub policy to sign with (without --device-id)")
	cmd.Flags().StringVar(&keyType, "key-type", "primary", "primary or secondary key")
	cmd.Flags().DurationVar(&duration, "duration", time.Hour, "how long the token is valid")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if duration <= 0 {
			return errors.New("--duration must be positive")
		}
		if keyType != "primary" && keyType != "secondary" {
			return fmt.Errorf("--key-type must be primary or secondary, not %q", keyType)
		}
		expiry := time.Now().Add(duration)
		var tok string
		if id != "" {
			hc, hubCS, _, err := cc.hubREST(cmd, name)
			if err != nil {
				return err
			}
			d, err := hc.GetDevice(cmd.Context(), id)
			if err != nil {
				return err
			}
			if d.Authentication == nil || d.Authentication.SymmetricKey == nil {
				return fmt.Errorf("device %s has no symmetric key (it authenticates with a certificate)", id)
			}
			key := d.Authentication.SymmetricKey.PrimaryKey
			if keyType == "secondary" {
				key = d.Authentication.SymmetricKey.SecondaryKey
			}
			if tok, err = sas.New(url.QueryEscape(hubCS.HostName+"/devices/"+id), "", key, expiry); err != nil {
				return err
			}
		} else {
			c, _, err := cc.adminClient()
			if err != nil {
				return err
			}
			in, err := c.Show(cmd.Context(), name)
			if err != nil {
				return err
			}
			if policy != "iothubowner" || keyType != "primary" {
				return errors.New("without --device-id only the iothubowner primary key is available from dpsd (--policy-name iothubowner --key-type primary)")
			}
			cs, err := sas.ParseConnectionString(in.ConnectionString)
			if err != nil {
				return err
			}
			if tok, err = sas.New(cs.HostName, cs.SharedAccessKeyName, cs.SharedAccessKey, expiry); err != nil {
				return err
			}
		}
		_, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), map[string]string{"sas": tok, "expiry": strconv.FormatInt(expiry.Unix(), 10)})
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), tok)
		return err
	}
	return cmd
}
