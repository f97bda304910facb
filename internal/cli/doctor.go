package cli

import (
	"fmt"
	"io"
	"net/http"
	"sort"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
)

func newDoctorCmd() *cobra.Command {
	var repair, prune, failOnProblems bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that every registration record and its hub identity agree",
		Long: `Check that every registration record and the device identity in its hub
agree, on the running service (built-in hubs and linked hubs alike):

  interrupted  a registration whose node died while working on it
  missing      a record says "assigned" but its hub holds no such device
  mismatch     the hub holds the device with other credentials than it proved
  orphan       a hub holds a device that no registration record names
               (only hubs that can list their devices: built-in hubs)
  unreachable  a hub that could not be asked

With --repair, interrupted work is finished or undone and missing or changed
identities are put back as their records say. Orphans are deleted only with
--prune as well, since a hub may hold devices made outside dpsd. The exit
status is 0 unless --fail-on-problems is given and problems remain.`,
		Args: cobra.NoArgs,
	}
	cc := newClientCmd(cmd)
	cmd.Flags().BoolVar(&repair, "repair", false, "fix what the check finds (needs RegistrationStatusWrite)")
	cmd.Flags().BoolVar(&prune, "prune", false, "with --repair, also delete orphan identities from the hubs")
	cmd.Flags().BoolVar(&failOnProblems, "fail-on-problems", false, "exit with status 1 when problems remain (for scripts and CI)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if prune && !repair {
			return fmt.Errorf("--prune goes with --repair")
		}
		c, asJSON, err := cc.extSetup()
		if err != nil {
			return err
		}
		var rep admin.CheckReport
		if repair {
			err = c.do(cmd.Context(), "repair", http.MethodPost, "/dpsd/doctor", &admin.DoctorRequest{Repair: true, Prune: prune}, &rep, "")
		} else {
			err = c.do(cmd.Context(), "check", http.MethodGet, "/dpsd/doctor", nil, &rep, "")
		}
		if err != nil {
			return err
		}
		if asJSON {
			err = writeJSON(cmd.OutOrStdout(), &rep)
		} else {
			err = printCheckReport(cmd.OutOrStdout(), &rep)
		}
		if err != nil {
			return err
		}
		if failOnProblems && rep.Total()-rep.Repaired > 0 {
			return fmt.Errorf("%d problems remain", rep.Total()-rep.Repaired)
		}
		return nil
	}
	return cmd
}

func printCheckReport(w io.Writer, r *admin.CheckReport) error {
	fmt.Fprintf(w, "Registrations checked: %d (in progress: %d, without a recorded identity: %d)\n", r.Registrations, r.InProgress, r.Unverifiable)
	fmt.Fprintf(w, "Hubs listed for orphans: %d\n", len(r.HubsListed))
	if r.Total() == 0 {
		_, err := fmt.Fprintln(w, "No problems: every record and its hub identity agree.")
		return err
	}
	kinds := make([]string, 0, len(r.Counts))
	for k := range r.Counts {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	fmt.Fprintf(w, "Problems: %d (repaired: %d)\n", r.Total(), r.Repaired)
	for _, k := range kinds {
		fmt.Fprintf(w, "  %-12s %d\n", k, r.Counts[k])
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nKIND\tREGISTRATION\tHUB\tDEVICE\tREPAIRED\tDETAIL")
	for _, p := range r.Problems {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s\n", cell(p.Kind), cell(p.RegistrationID), cell(p.Hub), cell(p.DeviceID), p.Repaired, cell(p.Detail))
	}
	return tw.Flush()
}
