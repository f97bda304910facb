package cli

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
)

const allocationPoliciesPath = "/dpsd/allocationPolicies"

// newAllocationPolicyCmd is "dpsd allocation-policy": the in-process
// custom allocation policies (CEL) that an enrollment selects with
// --allocation-policy custom --webhook-url policy:NAME.
func newAllocationPolicyCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "allocation-policy",
		Short: "Manage in-process custom allocation policies (CEL), selected with --webhook-url policy:NAME",
		Long: `An allocation policy is a CEL expression evaluated inside dpsd instead of
calling a webhook: it sees what a webhook would receive (registrationId,
payload, linkedHubs, currentHub, enrollment, and the whole request) and
answers what a webhook answers, a map with iotHubHostName and optionally
initialTwin and payload, or {"refuse": "reason"}. A policy is type-checked
when saved; a bad one is refused with the compiler's message and position.
An enrollment or group selects it with allocation policy custom and the
webhook URL policy:NAME.`,
		Args: cobra.NoArgs,
	}
	cf := addConnectFlags(cmd)
	out := addOutputFlag(cmd)
	pc := &policyCmd{&clientCmd{conn: cf, out: out}}
	cmd.AddCommand(pc.create(), pc.list(), pc.show(), pc.update(), pc.delete())
	return cmd
}

type policyCmd struct{ *clientCmd }

func policyPath(name string) string { return allocationPoliciesPath + "/" + url.PathEscape(name) }

// readPolicyFile reads a policy's source; "-" is standard input.
func readPolicyFile(cmd *cobra.Command, file string) (string, error) {
	var (
		b   []byte
		err error
	)
	if file == "-" {
		b, err = io.ReadAll(io.LimitReader(cmd.InOrStdin(), 1<<20))
	} else {
		b, err = os.ReadFile(file)
	}
	if err != nil {
		return "", fmt.Errorf("--file: %w", err)
	}
	return string(b), nil
}

func (pc *policyCmd) create() *cobra.Command {
	var file, desc string
	cmd := &cobra.Command{
		Use:   "create NAME --file FILE",
		Short: "Create an allocation policy from a CEL file (- for standard input)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&file, "file", "", "the policy's CEL source (- for standard input)")
	cmd.Flags().StringVar(&desc, "description", "", "what the policy is for")
	_ = cmd.MarkFlagRequired("file")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		src, err := readPolicyFile(cmd, file)
		if err != nil {
			return err
		}
		c, asJSON, err := pc.extSetup()
		if err != nil {
			return err
		}
		var p admin.AllocationPolicy
		def := admin.AllocationPolicyDefinition{Name: args[0], Expression: src, Description: desc}
		if err := c.do(cmd.Context(), fmt.Sprintf("create allocation policy %q", args[0]), http.MethodPost, allocationPoliciesPath, def, &p, ""); err != nil {
			return err
		}
		return printPolicy(cmd.OutOrStdout(), asJSON, &p, false)
	}
	return cmd
}

func (pc *policyCmd) update() *cobra.Command {
	var file, desc, etag string
	cmd := &cobra.Command{
		Use:   "update NAME --file FILE",
		Short: "Replace an allocation policy's source (it must exist)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&file, "file", "", "the policy's new CEL source (- for standard input)")
	cmd.Flags().StringVar(&desc, "description", "", "what the policy is for")
	cmd.Flags().StringVar(&etag, "etag", "", "update only if the policy still has this etag")
	_ = cmd.MarkFlagRequired("file")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		src, err := readPolicyFile(cmd, file)
		if err != nil {
			return err
		}
		c, asJSON, err := pc.extSetup()
		if err != nil {
			return err
		}
		if etag == "" {
			etag = "*" // it must exist: update is not create
		}
		var p admin.AllocationPolicy
		def := admin.AllocationPolicyDefinition{Expression: src, Description: desc}
		if err := c.do(cmd.Context(), fmt.Sprintf("update allocation policy %q", args[0]), http.MethodPut, policyPath(args[0]), def, &p, etag); err != nil {
			return err
		}
		return printPolicy(cmd.OutOrStdout(), asJSON, &p, false)
	}
	return cmd
}

func (pc *policyCmd) show() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show NAME",
		Short: "Show an allocation policy and its source",
		Args:  cobra.ExactArgs(1),
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, asJSON, err := pc.extSetup()
		if err != nil {
			return err
		}
		var p admin.AllocationPolicy
		if err := c.do(cmd.Context(), fmt.Sprintf("show allocation policy %q", args[0]), http.MethodGet, policyPath(args[0]), nil, &p, ""); err != nil {
			return err
		}
		return printPolicy(cmd.OutOrStdout(), asJSON, &p, true)
	}
	return cmd
}

func (pc *policyCmd) list() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the allocation policies",
		Args:  cobra.NoArgs,
	}
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, asJSON, err := pc.extSetup()
		if err != nil {
			return err
		}
		var ps []admin.AllocationPolicy
		if err := c.do(cmd.Context(), "list allocation policies", http.MethodGet, allocationPoliciesPath, nil, &ps, ""); err != nil {
			return err
		}
		if asJSON {
			return writeJSON(cmd.OutOrStdout(), nonNil(ps))
		}
		rows := make([][]string, 0, len(ps))
		for _, p := range ps {
			rows = append(rows, []string{p.Name, p.Description, p.ETag, timeString(p.LastUpdatedDateTimeUTC)})
		}
		return table(cmd.OutOrStdout(), []string{"NAME", "DESCRIPTION", "ETAG", "LAST UPDATED"}, rows)
	}
	return cmd
}

func (pc *policyCmd) delete() *cobra.Command {
	var etag string
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete an allocation policy (enrollments that select it fail to allocate until it exists again)",
		Args:  cobra.ExactArgs(1),
	}
	cmd.Flags().StringVar(&etag, "etag", "", "delete only if the policy still has this etag")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, _, err := pc.extSetup()
		if err != nil {
			return err
		}
		return c.do(cmd.Context(), fmt.Sprintf("delete allocation policy %q", args[0]), http.MethodDelete, policyPath(args[0]), nil, nil, etag)
	}
	return cmd
}

// printPolicy prints a policy; withSource adds its source, each line
// made safe for a terminal.
func printPolicy(w io.Writer, asJSON bool, p *admin.AllocationPolicy, withSource bool) error {
	if asJSON {
		return writeJSON(w, p)
	}
	if err := details(w, []field{
		{"Name", p.Name},
		{"Description", p.Description},
		{"Selected with", "--webhook-url policy:" + p.Name},
		{"ETag", p.ETag},
		{"Created", timeString(p.CreatedDateTimeUTC)},
		{"Last updated", timeString(p.LastUpdatedDateTimeUTC)},
	}); err != nil {
		return err
	}
	if !withSource {
		return nil
	}
	if _, err := fmt.Fprintln(w, "Expression:"); err != nil {
		return err
	}
	for _, line := range strings.Split(strings.TrimRight(p.Expression, "\n"), "\n") {
		if _, err := fmt.Fprintln(w, "  "+printable(strings.TrimRight(line, "\r"))); err != nil {
			return err
		}
	}
	return nil
}
