package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/service"
)

func newRegistrationCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "registration",
		Short: "Show and delete device registration records",
		Args:  cobra.NoArgs,
	}
	cc := newClientCmd(cmd)
	cmd.AddCommand(registrationShowCmd(cc), registrationListCmd(cc), registrationDeleteCmd(cc))
	return cmd
}

func registrationShowCmd(cc *clientCmd) *cobra.Command {
	var id, trackingID string
	var withLog bool
	cmd := &cobra.Command{
		Use:   "show",
		Short: "Show the registration record of a device, and the requests of it that were refused",
		Long: `Show the registration record of a device, followed by the device's requests
the node refused lately: each with the tracking id the device was told, and
the reason it was not told (a wrong key and an unknown registration id both
read "Unauthorized" to the device). A device that was never registered has
no record; its refusals are still shown, and the command exits 1.

With --tracking-id instead of --registration-id, show the refusal a device
was told that tracking id with. Each node keeps its latest 1,000 refusals in
memory; nodes sharing a PostgreSQL store also keep them there (the latest
10,000 of the last 7 days, all nodes together), so any node finds them. With
the embedded SQLite store, ask the node the device talked to.

With --allocation-log, also show why each allocation of the device chose its
hub: the policy, the candidate hubs with their weights and locations, the
reason, and for a device that already had a hub what reprovisioning did
(moved or stayed, twin migrated or reset); for custom allocations also the
request sent to the webhook or policy (enrollment without keys, webhook URL
with its query string masked, device runtime context, linked hubs), each
attempt's status and answer, and the outcome.

With -o json the answer is the record alone; with --allocation-log it is
{"registration": <record>, "allocationLog": {"registrationId": ..., "entries": [...]}},
and with --refusals the object also has "refusals": [...] (registration is
null for a device without a record). --tracking-id prints {"refusals": [...]};
when none is found the list is empty and the command exits 1.`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVar(&id, "registration-id", "", "registration ID of the device")
	cmd.Flags().StringVar(&trackingID, "tracking-id", "", "find the refused request a device was told this tracking id with")
	cmd.MarkFlagsOneRequired("registration-id", "tracking-id")
	cmd.MarkFlagsMutuallyExclusive("registration-id", "tracking-id")
	cmd.Flags().BoolVar(&withLog, "allocation-log", false, "also show the allocation log: why each allocation chose its hub (policy, candidates, reprovisioning), and custom allocations' webhook requests and answers")
	var withRefusals bool
	cmd.Flags().BoolVar(&withRefusals, "refusals", false, "with -o json: also list the device's refused requests")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		ctx, w := cmd.Context(), cmd.OutOrStdout()
		ext := extClient{c}
		if trackingID != "" {
			rs, err := fetchRefusals(ctx, ext, "", trackingID)
			if err != nil {
				return err
			}
			// Nothing found is an error in either format, as for an unknown
			// registration id; JSON still prints its (empty) list.
			var notFound error
			if len(rs.Refusals) == 0 {
				notFound = fmt.Errorf("no refused request with tracking id %s is kept (a node alone keeps its latest 1,000 refusals, nodes sharing a PostgreSQL store the latest 10,000 of the last 7 days)", trackingID)
			}
			if asJSON {
				if err := writeJSON(w, rs); err != nil {
					return err
				}
				return notFound
			}
			if notFound != nil {
				return notFound
			}
			return printRefusals(w, rs.Refusals)
		}
		r, getErr := c.GetRegistration(ctx, id)
		if getErr != nil && !isNotFound(getErr) {
			return getErr
		}
		// Refusals are wanted in the table view always, as JSON when asked.
		var refusals *admin.Refusals
		if !asJSON || withRefusals {
			if refusals, err = fetchRefusals(ctx, ext, id, ""); err != nil {
				return err
			}
		}
		var lg *admin.AllocationLog
		if withLog && r != nil {
			// The log lives in dpsd's extension API, which the Azure-shaped
			// methods do not cover.
			if lg, err = fetchAllocationLog(ctx, ext, r.RegistrationID); err != nil {
				return err
			}
		}
		if asJSON {
			switch {
			case withRefusals:
				if err := writeJSON(w, struct {
					Registration  *dps.DeviceRegistrationState `json:"registration"`
					AllocationLog *admin.AllocationLog         `json:"allocationLog,omitempty"`
					Refusals      []admin.Refusal              `json:"refusals"`
				}{r, lg, refusals.Refusals}); err != nil {
					return err
				}
				return getErr
			case getErr != nil:
				return getErr
			case withLog:
				return printRegistrationWithLog(cmd, true, r, lg)
			}
			return printRegistration(w, true, r)
		}
		if r != nil {
			if withLog {
				err = printRegistrationWithLog(cmd, false, r, lg)
			} else {
				err = printRegistration(w, false, r)
			}
			if err != nil {
				return err
			}
		}
		if len(refusals.Refusals) > 0 {
			if r == nil {
				fmt.Fprintf(w, "No registration record for %s; the device's requests were refused.\n", id)
			}
			fmt.Fprintln(w, "\nRefused requests (latest first, this node):")
			if err := printRefusals(w, refusals.Refusals); err != nil {
				return err
			}
		}
		return getErr
	}
	return cmd
}

// isNotFound reports whether err is the service's 404.
func isNotFound(err error) bool {
	var de *dps.Error
	return errors.As(err, &de) && de.Status() == http.StatusNotFound
}

// fetchRefusals reads the refusals the node kept of a registration id or
// with a tracking id.
func fetchRefusals(ctx context.Context, c extClient, registrationID, trackingID string) (*admin.Refusals, error) {
	q := url.Values{}
	if registrationID != "" {
		q.Set("registrationId", registrationID)
	}
	if trackingID != "" {
		q.Set("trackingId", trackingID)
	}
	ctx, cancel := context.WithTimeout(ctx, extTimeout)
	defer cancel()
	var rs admin.Refusals
	if err := c.svc.Do(ctx, http.MethodGet, "/dpsd/refusals", q, nil, &rs, ""); err != nil {
		return nil, fmt.Errorf("list refused requests: %w", err)
	}
	if rs.Refusals == nil {
		rs.Refusals = []admin.Refusal{}
	}
	return &rs, nil
}

// printRefusals prints refused requests, one block each.
func printRefusals(w io.Writer, list []admin.Refusal) error {
	for i, r := range list {
		if i > 0 {
			fmt.Fprintln(w)
		}
		err := details(w, []field{
			{"Time", r.Time.UTC().Format(time.RFC3339)},
			{"Tracking ID", r.TrackingID},
			{"Registration ID", r.RegistrationID},
			{"Transport", r.Transport},
			{"Operation", r.Operation},
			{"Device was told", fmt.Sprintf("%d %s", r.ErrorCode, r.ErrorMessage)},
			{"Reason", r.Reason},
			{"Remote address", r.RemoteAddr},
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func registrationListCmd(cc *clientCmd) *cobra.Command {
	var groupID string
	var top int
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the registration records of an enrollment group's devices",
		Args:  cobra.NoArgs,
	}
	groupIDFlag(cmd, &groupID)
	cmd.Flags().IntVar(&top, "top", 0, "list at most this many (0: all)")
	where := whereFlag(cmd, "status = 'assigned' AND assignedHub = 'hub1.example.com'")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		list, err := collect(cmd.Context(), top,
			func(ctx context.Context, o service.QueryOptions) (*service.Page[dps.DeviceRegistrationState], error) {
				o.Query = whereQuery(*where)
				return c.QueryRegistrations(ctx, groupID, o)
			})
		if err != nil {
			return err
		}
		return printRegistrations(cmd.OutOrStdout(), asJSON, list)
	}
	return cmd
}

func registrationDeleteCmd(cc *clientCmd) *cobra.Command {
	var id, etag string
	cmd := &cobra.Command{
		Use:   "delete",
		Short: "Delete the registration record of a device (the device stays in its hub)",
		Args:  cobra.NoArgs,
	}
	registrationIDFlag(cmd, &id)
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the record still has this etag")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, _, err := cc.setup()
		if err != nil {
			return err
		}
		return c.DeleteRegistration(cmd.Context(), id, etag)
	}
	return cmd
}

// printRegistrationWithLog prints a registration record followed by its
// allocation log; as JSON, both in one object so scripts parse one value.
func printRegistrationWithLog(cmd *cobra.Command, asJSON bool, r *dps.DeviceRegistrationState, lg *admin.AllocationLog) error {
	w := cmd.OutOrStdout()
	if asJSON {
		return writeJSON(w, struct {
			Registration  *dps.DeviceRegistrationState `json:"registration"`
			AllocationLog *admin.AllocationLog         `json:"allocationLog"`
		}{r, lg})
	}
	if err := printRegistration(w, false, r); err != nil {
		return err
	}
	if _, err := fmt.Fprintln(w, "\nAllocation log:"); err != nil {
		return err
	}
	return printAllocationLog(w, false, lg)
}
