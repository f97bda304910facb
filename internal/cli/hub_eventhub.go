package cli

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

// hubConnectionStringCmd builds "dpsd hub connection-string show", as
// "az iot hub connection-string show": the hub's own connection string or,
// with --default-eventhub, its Event Hubs-compatible endpoint's.
func hubConnectionStringCmd(cc *clientCmd) *cobra.Command {
	group := &cobra.Command{Use: "connection-string", Short: "Show a built-in hub's connection strings", Args: cobra.NoArgs}
	var name, policy string
	var eventHub bool
	show := &cobra.Command{
		Use:   "show",
		Short: "Show a built-in hub's connection string, or with --default-eventhub its Event Hubs-compatible endpoint's",
		Long: `Show the iothubowner connection string of a built-in hub or, with
--default-eventhub, the connection string of its Event Hubs-compatible endpoint:

  Endpoint=sb://HOST[:PORT]/;SharedAccessKeyName=service;SharedAccessKey=…;EntityPath=NAME

which @azure/event-hubs (EventHubConsumerClient) and the other Event Hubs SDKs
take to read the hub's device-to-cloud telemetry. The endpoint is served on
dpsd's AMQP listener (--amqp-addr, 5671 by default) under the hub's host name,
or for a hub created with --address on that address's own AMQP listener
(5671); the port is written only when it is not 5671.`,
		Example: `  dpsd hub connection-string show -n contoso-toasters-hub-1098 --default-eventhub
  dpsd hub connection-string show -n contoso-toasters-hub-1098 --default-eventhub --policy-name iothubowner`,
		Args: cobra.NoArgs,
	}
	hubNameFlag(show, &name)
	f := show.Flags()
	f.BoolVar(&eventHub, "default-eventhub", false, "the Event Hubs-compatible endpoint's connection string")
	f.StringVar(&policy, "policy-name", "", "shared access policy: service (default with --default-eventhub) or iothubowner")
	show.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.adminClient()
		if err != nil {
			return err
		}
		in, err := c.Show(cmd.Context(), name)
		if err != nil {
			return err
		}
		cs := in.ConnectionString
		if eventHub {
			if in.EventHubConnectionString == "" {
				why := "this node has no AMQP listener for it"
				if !in.Running {
					why = "the hub is not running: " + in.Error
				}
				return fmt.Errorf("hub %s has no Event Hubs-compatible endpoint: %s", in.Name, why)
			}
			cs, err = withPolicy(in.EventHubConnectionString, in.ConnectionString, policy)
			if err != nil {
				return err
			}
		} else if policy != "" && !strings.EqualFold(policy, "iothubowner") {
			return fmt.Errorf("--policy-name %q: only iothubowner's connection string is shown without --default-eventhub", policy)
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), map[string]string{"connectionString": cs})
		}
		_, err = fmt.Fprintln(cmd.OutOrStdout(), cs)
		return err
	}
	group.AddCommand(show)
	return group
}

// withPolicy rewrites the endpoint's connection string (service policy)
// for policy: "" or service as it is, iothubowner with the owner's key
// from the hub's connection string.
func withPolicy(ehCS, ownerCS, policy string) (string, error) {
	switch strings.ToLower(policy) {
	case "", "service":
		return ehCS, nil
	case "iothubowner":
	default:
		return "", fmt.Errorf("--policy-name %q: service or iothubowner (the policies that may read telemetry)", policy)
	}
	key := fieldOf(ownerCS, "SharedAccessKey")
	if key == "" {
		return "", fmt.Errorf("the hub's connection string has no key")
	}
	parts := strings.Split(ehCS, ";")
	for i, p := range parts {
		switch {
		case strings.HasPrefix(p, "SharedAccessKeyName="):
			parts[i] = "SharedAccessKeyName=iothubowner"
		case strings.HasPrefix(p, "SharedAccessKey="):
			parts[i] = "SharedAccessKey=" + key
		}
	}
	return strings.Join(parts, ";"), nil
}

// fieldOf returns a connection string's value for key.
func fieldOf(cs, key string) string {
	for p := range strings.SplitSeq(cs, ";") {
		if k, v, ok := strings.Cut(p, "="); ok && strings.EqualFold(k, key) {
			return v
		}
	}
	return ""
}
