package cli

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/client/service"
	"github.com/dpsd/dpsd/internal/hub/azurehub"
	"github.com/dpsd/dpsd/internal/hub/builtinhub"
	"github.com/dpsd/dpsd/internal/linkedhub"
)

// newHubCmd builds "dpsd hub": the IoT hubs built into a running dpsd.
func newHubCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "hub",
		Short: "Manage the IoT hubs built into dpsd (devices, twins, telemetry)",
		Long: `Manage the IoT hubs that run inside dpsd, so provisioned devices can connect
to a hub on this machine. Every hub has its own host name and serves the Azure
IoT hub service REST API and device MQTT on dpsd's own address and ports
(443 and 8883 as the SDKs expect, if dpsd serves on those), told apart from
the provisioning service and from each other by the host name clients use.
One hosts-file line ("dpsd hub hosts-line") makes every hub's name resolve.`,
		Args: cobra.NoArgs,
	}
	cc := newClientCmd(cmd)
	device := &cobra.Command{Use: "device", Short: "Show the device identities of a built-in hub", Args: cobra.NoArgs}
	device.AddCommand(hubDeviceListCmd(cc), hubDeviceShowCmd(cc))
	twin := &cobra.Command{Use: "twin", Short: "Show device twins of a built-in hub", Args: cobra.NoArgs}
	twin.AddCommand(hubTwinShowCmd(cc))
	cmd.AddCommand(hubCreateCmd(cc), hubListCmd(cc), hubShowCmd(cc), hubDeleteCmd(cc), hubHostsLineCmd(cc), device, twin, hubMessagesCmd(cc),
		hubMonitorEventsCmd(cc), hubC2DMessageCmd(cc), hubDeviceIdentityCmd(cc), hubModuleIdentityCmd(cc), hubDeviceTwinCmd(cc), hubCertificateCmd(cc),
		hubInvokeMethodCmd(cc), hubGenerateSASCmd(cc), hubConnectionStringCmd(cc))
	names := completeFrom(cc, builtinHubNames)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.Name() == "show" || c.Name() == "delete" {
			if c.Parent() == cmd {
				c.ValidArgsFunction = completeOnce(names)
				_ = c.RegisterFlagCompletionFunc("name", names)
			}
		}
		if c.Flags().Lookup("hub-name") != nil {
			_ = c.RegisterFlagCompletionFunc("hub-name", names)
		}
	}
	walk(cmd)
	return cmd
}

// builtinHubNames lists the built-in hubs' names.
func builtinHubNames(ctx context.Context, c *service.Client) ([]string, error) {
	list, err := builtinhub.AdminClientFor(c).List(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(list))
	for _, h := range list {
		names = append(names, h.Name)
	}
	return names, nil
}

// adminClient connects to the hub management API of the dpsd that the
// connection flags name, through the service client the other commands use.
func (cc *clientCmd) adminClient() (*builtinhub.AdminClient, bool, error) {
	c, asJSON, err := cc.setup()
	if err != nil {
		return nil, false, err
	}
	return builtinhub.AdminClientFor(c), asJSON, nil
}

// hubLinkFlags are "dpsd hub create"'s flags for linking the new hub at
// once. They cannot reuse addHubFlags: "hub" already has a
// --connection-string flag, the service's.
type hubLinkFlags struct {
	link     bool
	weight   int
	apply    bool
	location string
}

// definition is the linked hub to create for a new built-in hub; only the
// settings given on the command line are sent, so the service's defaults
// apply to the others.
func (lf *hubLinkFlags) definition(cmd *cobra.Command, connectionString string) admin.LinkedHubDefinition {
	d := admin.LinkedHubDefinition{ConnectionString: connectionString}
	f := cmd.Flags()
	if f.Changed("allocation-weight") {
		d.AllocationWeight = &lf.weight
	}
	if f.Changed("apply-allocation-policy") {
		d.ApplyAllocationPolicy = &lf.apply
	}
	if f.Changed("location") {
		d.Location = &lf.location
	}
	return d
}

// createdHub is what "dpsd hub create -o json" prints: the hub, and with
// --link the linked hub as well (the hub's members stay at the top level,
// so scripts written for the plain command keep working).
type createdHub struct {
	*admin.Hub
	LinkedHub *admin.LinkedHub `json:"linkedHub,omitempty"`
}

func hubCreateCmd(cc *clientCmd) *cobra.Command {
	var req admin.CreateHubRequest
	var lf hubLinkFlags
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a built-in hub and start it (with --link, also link it to the provisioning service)",
		Long: `Create a built-in IoT hub and start it. Its host name is
NAME.` + builtinhub.DefaultDomain + ` unless --host-name says otherwise. It is served on
dpsd's own listeners — the HTTPS one (service REST API, MQTT over WebSockets)
and the MQTT one — which tell its connections apart by the TLS server name,
so it needs no address, port or privilege of its own. The SDKs use the
standard ports 443 and 8883: run "dpsd serve" on those for them. Make the host
name resolve with the one hosts-file line "dpsd hub hosts-line" prints for
every hub.

With --address the hub instead listens by itself on that IP address (of this
machine), on ports 443 (REST API, HTTPS, MQTT and AMQP over WebSockets), 8883
(MQTT) and 5671 (AMQP and the Event Hubs-compatible endpoint).

With --link the hub is also linked to the provisioning service, as
"dpsd linked-hub create --connection-string <the hub's connection string>"
would do, so devices can be allocated to it at once.`,
		Example: `  dpsd hub create contoso-toasters-hub-1098 --link
  dpsd hub create contoso-heatpumps-hub-1098 --link --allocation-weight 2
  dpsd hub create isolated-hub --address 127.0.0.11`,
		Args: cobra.ExactArgs(1),
	}
	f := cmd.Flags()
	f.StringVar(&req.Address, "address", "", "IP address for this hub alone to listen on (default: share dpsd's own listeners)")
	f.StringVar(&req.HostName, "host-name", "", "host name of the hub (default NAME."+builtinhub.DefaultDomain+")")
	f.BoolVar(&lf.link, "link", false, "also link the hub to the provisioning service")
	f.IntVar(&lf.weight, "allocation-weight", linkedhub.DefaultWeight,
		fmt.Sprintf("with --link: allocation weight, %d–%d", linkedhub.MinWeight, linkedhub.MaxWeight))
	f.BoolVar(&lf.apply, "apply-allocation-policy", true, "with --link: whether allocation assigns devices to the hub when enrollments name no hubs")
	f.StringVar(&lf.location, "location", "", "with --link: the hub's location (used by geoLatency allocation)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if !lf.link {
			for _, name := range []string{"allocation-weight", "apply-allocation-policy", "location"} {
				if cmd.Flags().Changed(name) {
					return fmt.Errorf("--%s only applies with --link", name)
				}
			}
		}
		// One client serves both the hub and the link, so nothing is left
		// to resolve once the hub exists that could leave it half done.
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		in, err := builtinhub.AdminClientFor(c).Create(cmd.Context(), args[0], req)
		if err != nil {
			return err
		}
		out := createdHub{Hub: in}
		if lf.link {
			var h admin.LinkedHub
			if err := (extClient{c}).do(cmd.Context(), "link hub", http.MethodPost, linkedHubsPath, lf.definition(cmd, in.ConnectionString), &h, ""); err != nil {
				// The hub itself is fine; say how to finish by hand.
				return fmt.Errorf("hub %s was created, but linking it failed (link it with \"dpsd linked-hub create --connection-string '%s'\"): %w",
					in.Name, in.ConnectionString, err)
			}
			out.LinkedHub = &h
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), out)
		}
		w := cmd.OutOrStdout()
		if err := printHub(w, in, true); err != nil {
			return err
		}
		if h := out.LinkedHub; h != nil {
			if _, err := fmt.Fprintf(w, "\nLinked to the provisioning service as %s (allocation weight %d, apply allocation policy %s).\n",
				h.Name, h.AllocationWeight, boolString(h.ApplyAllocationPolicy)); err != nil {
				return err
			}
		}
		if in.Shared {
			// One line for every hub on the shared address, this one included.
			line := in.HostsLine
			if list, err := builtinhub.AdminClientFor(c).List(cmd.Context()); err == nil {
				for _, l := range hostsLines(list) {
					if strings.HasPrefix(l, in.Address+" ") {
						line = l
					}
				}
			}
			_, err = fmt.Fprintf(w, "\nMake the host names of all hubs resolve with this one line in /etc/hosts (Windows:\nC:\\Windows\\System32\\drivers\\etc\\hosts); \"dpsd hub hosts-line\" prints it again:\n  %s\n", line)
			return err
		}
		_, err = fmt.Fprintf(w, "\nMake the host name resolve by adding this line to /etc/hosts (Windows: C:\\Windows\\System32\\drivers\\etc\\hosts):\n  %s\n", in.HostsLine)
		return err
	}
	return cmd
}

func hubHostsLineCmd(cc *clientCmd) *cobra.Command {
	return &cobra.Command{
		Use:   "hosts-line",
		Short: "Print the hosts-file line(s) that make every built-in hub's host name resolve",
		Long: `Print what to put in /etc/hosts so that every built-in hub's host name
resolves: one line for all the hubs on dpsd's shared address, and one per hub
that has an address of its own. Run it again after creating or deleting hubs,
or point one wildcard DNS record for the hub domain at dpsd's address.`,
		Example: `  dpsd hub hosts-line | sudo tee -a /etc/hosts`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := cc.adminClient()
			if err != nil {
				return err
			}
			list, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			lines := hostsLines(list)
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), nonNil(lines))
			}
			for _, l := range lines {
				if _, err := fmt.Fprintln(cmd.OutOrStdout(), l); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

// hostsLines are hosts-file lines for hubs: one per address, naming every
// hub on it, in the order addresses first appear.
func hostsLines(hubs []*admin.Hub) []string {
	var addrs []string
	names := map[string][]string{}
	for _, h := range hubs {
		if h.Address == "" {
			continue
		}
		if _, ok := names[h.Address]; !ok {
			addrs = append(addrs, h.Address)
		}
		names[h.Address] = append(names[h.Address], h.HostName)
	}
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a+" "+strings.Join(names[a], " "))
	}
	return out
}

func hubListCmd(cc *clientCmd) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the built-in hubs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, asJSON, err := cc.adminClient()
			if err != nil {
				return err
			}
			list, err := c.List(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), nonNil(list))
			}
			rows := make([][]string, 0, len(list))
			for _, in := range list {
				state := "running"
				if !in.Running {
					state = "stopped: " + in.Error
				}
				rows = append(rows, []string{in.Name, in.HostName, in.Address, state})
			}
			return table(cmd.OutOrStdout(), []string{"NAME", "HOST NAME", "ADDRESS", "STATE"}, rows)
		},
	}
}

func hubShowCmd(cc *clientCmd) *cobra.Command {
	var withCS bool
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show a built-in hub",
		Args:  cobra.ExactArgs(1),
	}
	// Not --connection-string: that is the persistent flag naming the service.
	cmd.Flags().BoolVar(&withCS, "show-connection-string", false, "print only the hub's iothubowner connection string")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		in, err := c.Show(cmd.Context(), args[0])
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		switch {
		case withCS && asJSON:
			return writeJSON(w, map[string]string{"connectionString": in.ConnectionString})
		case withCS:
			_, err := fmt.Fprintln(w, in.ConnectionString)
			return err
		case asJSON:
			return writeJSON(w, in)
		}
		return printHub(w, in, false)
	}
	nameFlag(cmd, "name", "n", "the hub's name, instead of NAME (as az's -n)")
	return cmd
}

func printHub(w io.Writer, in *admin.Hub, withCS bool) error {
	state := "running"
	if !in.Running {
		state = "stopped: " + in.Error
	}
	fields := []field{
		{"Name", in.Name},
		{"Host name", in.HostName},
		{"Address", in.Address},
		{"State", state},
		{"Service REST + MQTT/WebSockets", in.HTTPSAddr},
		{"Device MQTT", in.MQTTAddr},
		{"AMQP and Event Hubs", in.AMQPAddr},
		{"Hosts-file line", in.HostsLine},
	}
	if in.EventHubConnectionString != "" {
		fields = append(fields, field{"Event Hubs-compatible endpoint", eventHubEndpoint(in.EventHubConnectionString)})
	}
	if withCS {
		fields = append(fields, field{"Connection string", in.ConnectionString})
	}
	return details(w, fields)
}

// eventHubEndpoint is an endpoint connection string without its key.
func eventHubEndpoint(cs string) string {
	return fieldOf(cs, "Endpoint") + " (EntityPath " + fieldOf(cs, "EntityPath") + "; \"dpsd hub connection-string show --default-eventhub\")"
}

func hubDeleteCmd(cc *clientCmd) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Unlink a built-in hub from the provisioning service, stop it and delete it with its devices",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := cc.adminClient()
			if err != nil {
				return err
			}
			return c.Delete(cmd.Context(), args[0])
		},
	}
	nameFlag(cmd, "name", "n", "the hub's name, instead of NAME (as az's -n)")
	return cmd
}

func hubDeviceListCmd(cc *clientCmd) *cobra.Command {
	var name string
	var top int
	cmd := &cobra.Command{Use: "list", Short: "List a hub's device identities", Args: cobra.NoArgs}
	hubNameFlag(cmd, &name)
	cmd.Flags().IntVar(&top, "top", 0, "list at most this many (0: all)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		var all []*azurehub.Device
		after := ""
		for range 100_000 { // bounded: each round reads a page
			page, err := c.Devices(cmd.Context(), name, after, 0)
			if err != nil {
				return err
			}
			all = append(all, page.Devices...)
			if page.ContinuationToken == "" || (top > 0 && len(all) >= top) {
				break
			}
			after = page.ContinuationToken
		}
		if top > 0 && len(all) > top {
			all = all[:top]
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), nonNil(all))
		}
		rows := make([][]string, 0, len(all))
		for _, d := range all {
			auth := ""
			if d.Authentication != nil {
				auth = d.Authentication.Type
			}
			rows = append(rows, []string{d.DeviceID, d.Status, d.ConnectionState, auth, d.LastActivityTime})
		}
		return table(cmd.OutOrStdout(), []string{"DEVICE ID", "STATUS", "CONNECTION", "AUTH", "LAST ACTIVITY"}, rows)
	}
	return cmd
}

func hubDeviceShowCmd(cc *clientCmd) *cobra.Command {
	var name, id string
	cmd := &cobra.Command{Use: "show", Short: "Show a device identity (with its keys)", Args: cobra.NoArgs}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		d, err := c.Device(cmd.Context(), name, id)
		if err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), d)
		}
		fields := []field{
			{"Device ID", d.DeviceID},
			{"Status", d.Status},
			{"Connection state", d.ConnectionState},
			{"Last activity", d.LastActivityTime},
			{"Generation ID", d.GenerationID},
			{"ETag", d.ETag},
		}
		if a := d.Authentication; a != nil {
			fields = append(fields, field{"Authentication", a.Type})
			if k := a.SymmetricKey; k != nil {
				fields = append(fields, field{"Primary key", k.PrimaryKey}, field{"Secondary key", k.SecondaryKey})
			}
		}
		if d.Capabilities != nil {
			fields = append(fields, field{"IoT Edge", strconv.FormatBool(d.Capabilities.IoTEdge)})
		}
		return details(cmd.OutOrStdout(), fields)
	}
	return cmd
}

func hubTwinShowCmd(cc *clientCmd) *cobra.Command {
	var name, id string
	cmd := &cobra.Command{Use: "show", Short: "Show a device twin (always JSON)", Args: cobra.NoArgs}
	hubNameFlag(cmd, &name)
	hubDeviceIDFlag(cmd, &id)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := cc.adminClient()
		if err != nil {
			return err
		}
		t, err := c.Twin(cmd.Context(), name, id)
		if err != nil {
			return err
		}
		return writeJSON(cmd.OutOrStdout(), t)
	}
	return cmd
}

func hubMessagesCmd(cc *clientCmd) *cobra.Command {
	var name, id string
	var after int64
	var top int
	cmd := &cobra.Command{
		Use:   "messages",
		Short: "List the telemetry a built-in hub received (it keeps the most recent messages, by count, bytes and age)",
		Args:  cobra.NoArgs,
	}
	hubNameFlag(cmd, &name)
	cmd.Flags().StringVar(&id, "device-id", "", "only this device's messages")
	cmd.Flags().Int64Var(&after, "after", 0, "only messages with a sequence number above this")
	cmd.Flags().IntVar(&top, "top", 0, "list at most this many (0: all kept)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		// The hub answers a page at a time (at most 4 MiB); page on
		// from the last sequence number until the list is done.
		var msgs []builtinhub.Message
		for {
			want := 0
			if top > 0 {
				want = top - len(msgs)
			}
			page, err := c.Messages(cmd.Context(), name, id, after, want)
			if err != nil {
				return err
			}
			msgs = append(msgs, page...)
			if len(page) == 0 || (top > 0 && len(msgs) >= top) {
				break
			}
			after = page[len(page)-1].SequenceNumber
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), nonNil(msgs))
		}
		rows := make([][]string, 0, len(msgs))
		for _, m := range msgs {
			props := make([]string, 0, len(m.Properties))
			for k, v := range m.Properties {
				props = append(props, k+"="+v)
			}
			body := m.Body
			if m.BodyEncoding != "" {
				body = m.BodyEncoding + ":" + body
			}
			rows = append(rows, []string{strconv.FormatInt(m.SequenceNumber, 10), m.EnqueuedTime.Format("2006-01-02T15:04:05.000Z"),
				m.DeviceID, strings.Join(props, "&"), body})
		}
		return table(cmd.OutOrStdout(), []string{"SEQ", "ENQUEUED", "DEVICE ID", "PROPERTIES", "BODY"}, rows)
	}
	return cmd
}

func hubNameFlag(cmd *cobra.Command, name *string) {
	cmd.Flags().StringVarP(name, "hub-name", "n", "", "name of the built-in hub")
	_ = cmd.MarkFlagRequired("hub-name")
}

func hubDeviceIDFlag(cmd *cobra.Command, id *string) {
	cmd.Flags().StringVarP(id, "device-id", "d", "", "device ID")
	_ = cmd.MarkFlagRequired("device-id")
}
