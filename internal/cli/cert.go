package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/internal/certs"
	"github.com/dpsd/dpsd/internal/enroll"
)

// newCertCmd is "dpsd cert": a test PKI for X.509 attestation, like the
// sample scripts of Azure IoT (certGen.sh): a root CA, intermediates,
// device certificates and the verification certificate that proves
// possession of a CA's key. Every certificate is written as PREFIX.cert.pem,
// PREFIX-full-chain.cert.pem (with its issuers, what a device presents) and
// PREFIX.key.pem. They are for tests only: keys are unencrypted.
func newCertCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cert",
		Short: "Make test certificates for X.509 attestation (root, intermediate, device, verification)",
		Long: `Make a test PKI for X.509 attestation, like Azure IoT's sample scripts.

Each command writes PREFIX.cert.pem, PREFIX-full-chain.cert.pem (the
certificate and its issuers, what a device presents) and PREFIX.key.pem.
--ca PREFIX names a CA made the same way. Keys are not encrypted: these
certificates are for tests and demonstrations only.

  dpsd cert root --out certs/root
  dpsd cert intermediate --ca certs/root --out certs/intermediate
  dpsd cert device --ca certs/intermediate --common-name my-device
  dpsd cert verification --ca certs/root --code <verification code>`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(
		certSubcommand("root", "Make a self-signed root CA", "dpsd Test-Only Root CA", "root", false),
		certSubcommand("intermediate", "Make an intermediate CA signed by --ca", "dpsd Test-Only Intermediate CA", "intermediate", true),
		certSubcommand("device", "Make a device certificate signed by --ca; its CN is the registration id", "", "", true),
		certSubcommand("verification", "Make the verification certificate for a CA's verification code", "", "verification", true),
	)
	return cmd
}

func certSubcommand(kind, short, defaultCN, defaultOut string, needsCA bool) *cobra.Command {
	var cn, out, ca, code string
	var days int
	cmd := &cobra.Command{Use: kind, Short: short, Args: cobra.NoArgs}
	f := cmd.Flags()
	switch kind {
	case "verification":
		f.StringVar(&code, "code", "", "the verification code (from dpsd certificate generate-verification-code)")
		_ = cmd.MarkFlagRequired("code")
	case "device":
		f.StringVar(&cn, "common-name", "", "subject CN: the device's registration id")
		_ = cmd.MarkFlagRequired("common-name")
	default:
		f.StringVar(&cn, "common-name", defaultCN, "subject CN")
	}
	outHelp := "path prefix of the files to write"
	if defaultOut == "" {
		outHelp += " (default: the common name, in the current directory)"
	}
	f.StringVar(&out, "out", defaultOut, outHelp)
	if needsCA {
		f.StringVar(&ca, "ca", "", "path prefix of the signing CA's files (PREFIX-full-chain.cert.pem or PREFIX.cert.pem, and PREFIX.key.pem)")
		_ = cmd.MarkFlagRequired("ca")
	}
	f.IntVar(&days, "days", int(certs.DefaultValidity/(24*time.Hour)), "days of validity")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if days <= 0 {
			return errors.New("--days must be positive")
		}
		opt := certs.IssueOptions{Validity: time.Duration(days) * 24 * time.Hour}
		if kind == "verification" {
			cn = code
		}
		if strings.TrimSpace(cn) == "" {
			return errors.New("the common name is empty")
		}
		if out == "" {
			out = cn
		}
		var issued *certs.Issued
		var err error
		if kind == "root" {
			issued, err = certs.NewRoot(cn, opt)
		} else {
			var parent *certs.Issued
			if parent, err = certs.Load(certs.FilesFor(ca)); err != nil {
				return fmt.Errorf("read the CA %s: %w", ca, err)
			}
			switch kind {
			case "intermediate":
				issued, err = parent.Intermediate(cn, opt)
			case "device":
				issued, err = parent.Device(cn, opt)
			default:
				issued, err = parent.Verification(cn, opt)
			}
		}
		if err != nil {
			return err
		}
		if dir := filepath.Dir(out); dir != "." {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		files := certs.FilesFor(out)
		if err := issued.WriteFiles(files); err != nil {
			return err
		}
		return printIssued(cmd.OutOrStdout(), issued, files)
	}
	return cmd
}

func printIssued(w io.Writer, i *certs.Issued, f certs.Files) error {
	sum := sha256.Sum256(i.Cert.Raw)
	return details(w, []field{
		{"Subject", enroll.FormatName(i.Cert.Subject)},
		{"Issuer", enroll.FormatName(i.Cert.Issuer)},
		{"Valid until", i.Cert.NotAfter.UTC().Format(time.RFC3339)},
		{"SHA-256 thumbprint", strings.ToUpper(hex.EncodeToString(sum[:]))},
		{"Certificate", f.Cert},
		{"Full chain", f.FullChain},
		{"Private key", f.Key},
	})
}
