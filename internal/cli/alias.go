package cli

import (
	"fmt"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// flagAliases makes cmd (and the subcommands added to it so far) accept
// az's spellings of flags as aliases of dpsd's: aliases maps az's name to
// ours. Help shows dpsd's names, with az's in the flag's usage.
func flagAliases(cmd *cobra.Command, aliases map[string]string) {
	normalize := func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if to, ok := aliases[name]; ok {
			return pflag.NormalizedName(to)
		}
		return pflag.NormalizedName(name)
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.Flags().SetNormalizeFunc(normalize)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(cmd)
}

// nameFlag lets cmd, which takes one NAME argument, take it as --flag
// (with shorthand, when not empty) too, as az names resources with flags.
// Call it after cmd.RunE is set.
func nameFlag(cmd *cobra.Command, flag, shorthand, usage string) {
	var v string
	cmd.Flags().StringVarP(&v, flag, shorthand, "", usage)
	cmd.Args = func(_ *cobra.Command, args []string) error {
		switch {
		case v != "" && len(args) > 0:
			return fmt.Errorf("give the name as an argument or with --%s, not both", flag)
		case v == "" && len(args) != 1:
			return fmt.Errorf("give the name as the one argument or with --%s", flag)
		}
		return nil
	}
	run := cmd.RunE
	cmd.RunE = func(c *cobra.Command, args []string) error {
		if v != "" {
			args = []string{v}
		}
		return run(c, args)
	}
}
