package cli

import (
	"regexp"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// walk calls f for cmd and every command under it, hidden ones included.
func walk(cmd *cobra.Command, f func(*cobra.Command)) {
	f(cmd)
	for _, c := range cmd.Commands() {
		walk(c, f)
	}
}

// commandArgs is the words that run cmd ("dpsd enrollment list" is
// enrollment list).
func commandArgs(cmd *cobra.Command) []string {
	return strings.Fields(cmd.CommandPath())[1:]
}

// TestEveryCommandRefusesUnknownInput walks the whole command tree: every
// command, group or not, fails on a flag it does not know (before, or
// instead of, doing anything), every group fails on a word that names no
// command, and every command that runs fails on more positional arguments
// than it takes — none of them prints help and exits 0, or ignores what it
// was told.
func TestEveryCommandRefusesUnknownInput(t *testing.T) {
	type tc struct {
		name    string
		args    []string
		wantErr *regexp.Regexp
	}
	var tests []tc
	walk(NewRootCommand(), func(c *cobra.Command) {
		if c.Name() == "help" || c.Name() == "completion" || strings.HasPrefix(c.CommandPath(), "dpsd completion ") {
			return // cobra's own
		}
		base := commandArgs(c)
		path := c.CommandPath()
		tests = append(tests, tc{path + " --bogus", append(base[:len(base):len(base)], "--bogus"),
			regexp.MustCompile(`unknown flag: --bogus`)})
		tests = append(tests, tc{path + " --bogus=1 -Z", append(base[:len(base):len(base)], "--bogus=1", "-Z"),
			regexp.MustCompile(`unknown (flag|shorthand flag)`)})
		if c.HasSubCommands() {
			tests = append(tests, tc{path + " nosuchcommand", append(base[:len(base):len(base)], "nosuchcommand"),
				regexp.MustCompile(`unknown command "nosuchcommand" for "` + regexp.QuoteMeta(path) + `"`)})
			tests = append(tests, tc{path + " nosuchcommand --bogus", append(base[:len(base):len(base)], "nosuchcommand", "--bogus"),
				regexp.MustCompile(`unknown command "nosuchcommand"`)})
			return
		}
		// No command takes ten positional arguments.
		extra := append(base[:len(base):len(base)], strings.Fields("a1 a2 a3 a4 a5 a6 a7 a8 a9 a10")...)
		tests = append(tests, tc{path + " a1…a10", extra,
			regexp.MustCompile(`unknown command "a1"|accepts( at most)? \d+ arg|requires( at least)? \d+ arg|received 10|as the one argument`)})
	})
	if len(tests) < 100 {
		t.Fatalf("only %d cases: the walk missed the tree", len(tests))
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if err == nil {
				t.Fatalf("dpsd %s: no error; out:\n%s", strings.Join(tc.args, " "), out)
			}
			if !tc.wantErr.MatchString(err.Error()) {
				t.Errorf("dpsd %s: error %q does not match %s", strings.Join(tc.args, " "), err, tc.wantErr)
			}
		})
	}
}

// TestEveryLeafDeclaresItsArgs: cobra lets a command without Args take
// any positional argument silently, so each one says what it takes.
func TestEveryLeafDeclaresItsArgs(t *testing.T) {
	walk(NewRootCommand(), func(c *cobra.Command) {
		if c.HasSubCommands() || !c.Runnable() || c.Name() == "help" || strings.HasPrefix(c.CommandPath(), "dpsd completion") {
			return
		}
		if c.Args == nil {
			t.Errorf("%s: no Args validator", c.CommandPath())
		}
	})
}
