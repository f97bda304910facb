package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/service"
)

// importWorkers is how many bulk requests an import keeps in flight: enough
// to hide the round trip, few enough not to crowd out devices.
const importWorkers = 4

// maxImportErrors bounds the failed items an import prints one by one.
const maxImportErrors = 20

// csvColumns are the columns an import CSV may have, as the service API
// names the members.
var csvColumns = []string{"registrationId", "deviceId", "provisioningStatus", "primaryKey", "secondaryKey",
	"iotHubs", "allocationPolicy", "iotEdge", "initialTwinTags"}

// readImport reads enrollments from JSON Lines (one enrollment, in the
// service API's shape, per line; blank lines and lines starting with #
// skipped) or CSV (a header row naming csvColumns), chosen by format or
// else by the file's extension.
func readImport(r io.Reader, format string) ([]dps.IndividualEnrollment, error) {
	switch format {
	case "jsonl", "json":
		return readJSONL(r)
	case "csv":
		return readCSV(r)
	}
	return nil, fmt.Errorf("unknown format %q: want jsonl or csv", format)
}

func readJSONL(r io.Reader) ([]dps.IndividualEnrollment, error) {
	var out []dps.IndividualEnrollment
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := bytes.TrimSpace(sc.Bytes())
		if len(text) == 0 || text[0] == '#' {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(text))
		dec.DisallowUnknownFields()
		var e dps.IndividualEnrollment
		if err := dec.Decode(&e); err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		if e.RegistrationID == "" {
			return nil, fmt.Errorf("line %d: no registrationId", line)
		}
		if e.Attestation == nil {
			e.Attestation = &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey}
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", len(out)+1, err)
	}
	return out, nil
}

func readCSV(r io.Reader) ([]dps.IndividualEnrollment, error) {
	cr := csv.NewReader(r)
	cr.Comment = '#'
	cr.TrimLeadingSpace = true
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		name := ""
		for _, c := range csvColumns {
			if strings.EqualFold(strings.TrimSpace(h), c) {
				name = c
			}
		}
		if name == "" {
			return nil, fmt.Errorf("header: unknown column %q (columns: %s)", h, strings.Join(csvColumns, ", "))
		}
		col[name] = i
	}
	if _, ok := col["registrationId"]; !ok {
		return nil, errors.New("header: no registrationId column")
	}
	var out []dps.IndividualEnrollment
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
		line, _ := cr.FieldPos(0)
		get := func(name string) string {
			if i, ok := col[name]; ok && i < len(rec) {
				return strings.TrimSpace(rec[i])
			}
			return ""
		}
		e := dps.IndividualEnrollment{
			RegistrationID:     get("registrationId"),
			DeviceID:           get("deviceId"),
			ProvisioningStatus: get("provisioningStatus"),
			AllocationPolicy:   get("allocationPolicy"),
			Attestation:        &dps.AttestationMechanism{Type: dps.AttestationSymmetricKey},
		}
		if e.RegistrationID == "" {
			return nil, fmt.Errorf("line %d: no registrationId", line)
		}
		if p, s := get("primaryKey"), get("secondaryKey"); p != "" || s != "" {
			e.Attestation.SymmetricKey = &dps.SymmetricKeyAttestation{PrimaryKey: p, SecondaryKey: s}
		}
		if hubs := get("iotHubs"); hubs != "" {
			for _, h := range strings.Split(hubs, ";") {
				if h = strings.TrimSpace(h); h != "" {
					e.IoTHubs = append(e.IoTHubs, h)
				}
			}
		}
		if v := get("iotEdge"); v != "" {
			b, err := strconv.ParseBool(v)
			if err != nil {
				return nil, fmt.Errorf("line %d: iotEdge %q: want true or false", line, v)
			}
			e.Capabilities = &dps.DeviceCapabilities{IoTEdge: b}
		}
		if v := get("initialTwinTags"); v != "" {
			var tags map[string]any
			if err := json.Unmarshal([]byte(v), &tags); err != nil {
				return nil, fmt.Errorf("line %d: initialTwinTags: want a JSON object: %w", line, err)
			}
			e.InitialTwin = &dps.InitialTwin{Tags: json.RawMessage(v)}
		}
		out = append(out, e)
	}
}

// importResult is what an import did.
type importResult struct {
	Total    int                                `json:"total"`
	Imported int                                `json:"imported"`
	Failed   int                                `json:"failed"`
	Errors   []dps.BulkEnrollmentOperationError `json:"errors"`
}

// importEnrollments sends list in bulk requests of dps.MaxBulkItems (the
// service API's limit, which the CLI hides), importWorkers at a time,
// calling progress after each.
func importEnrollments(ctx context.Context, c *service.Client, list []dps.IndividualEnrollment, mode string,
	progress func(done, failed int)) (*importResult, error) {
	res := &importResult{Total: len(list), Errors: []dps.BulkEnrollmentOperationError{}}
	seen := map[string]int{}
	for i, e := range list {
		id := strings.ToLower(e.RegistrationID)
		if j, dup := seen[id]; dup {
			return nil, fmt.Errorf("registration id %s is in the file twice (entries %d and %d)", e.RegistrationID, j+1, i+1)
		}
		seen[id] = i
	}
	batches := make(chan []dps.IndividualEnrollment)
	var mu sync.Mutex
	var firstErr error
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for range importWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for batch := range batches {
				r, err := c.BulkEnrollments(ctx, &dps.BulkEnrollmentOperation{Mode: mode, Enrollments: batch})
				mu.Lock()
				if err != nil {
					if firstErr == nil {
						firstErr = err
						cancel()
					}
					mu.Unlock()
					continue
				}
				res.Failed += len(r.Errors)
				res.Imported += len(batch) - len(r.Errors)
				res.Errors = append(res.Errors, r.Errors...)
				if progress != nil {
					progress(res.Imported+res.Failed, res.Failed)
				}
				mu.Unlock()
			}
		}()
	}
send:
	for i := 0; i < len(list); i += dps.MaxBulkItems {
		select {
		case batches <- list[i:min(i+dps.MaxBulkItems, len(list))]:
		case <-ctx.Done():
			break send
		}
	}
	close(batches)
	wg.Wait()
	if firstErr != nil {
		return res, fmt.Errorf("import stopped after %d of %d: %w", res.Imported+res.Failed, res.Total, firstErr)
	}
	if err := ctx.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return res, err
	}
	return res, nil
}

func enrollmentImportCmd(cc *clientCmd) *cobra.Command {
	var file, format, mode string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "import --file FILE",
		Short: "Create (or update) many individual enrollments from a JSON Lines or CSV file, with progress",
		Long: `Create many individual enrollments from a file, any number of them: the
service API takes at most 10 per bulk request, so the command sends them 10
at a time, 4 requests at once, and prints its progress to standard error.

A .jsonl file has one enrollment per line in the service API's shape (what
"dpsd enrollment show -o json" prints); an enrollment without attestation
gets symmetric keys the service generates. A .csv file has a header row
naming some of the columns registrationId (required), deviceId,
provisioningStatus, primaryKey, secondaryKey, iotHubs (host names separated
by ";"), allocationPolicy, iotEdge (true/false) and initialTwinTags (JSON).
Lines starting with # are skipped in both.

With --mode create (the default) an enrollment that exists is a failure of
that item (409001); --mode update creates or replaces. The command prints a
summary and the failed items, and exits 1 if any failed. The same
registration id twice in a file is refused before anything is sent.`,
		Example: `  dpsd enrollment import --file devices.csv
  dpsd enrollment import --file devices.jsonl --mode update -o json`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "the file (.jsonl or .csv; - for standard input with --format)")
	_ = cmd.MarkFlagRequired("file")
	cmd.Flags().StringVar(&format, "format", "", "jsonl or csv (default: from the file's extension)")
	cmd.Flags().StringVar(&mode, "mode", dps.BulkCreate, "create (existing enrollments fail) or update (create or replace)")
	cmd.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if mode != dps.BulkCreate && mode != dps.BulkUpdate {
			return fmt.Errorf("--mode %q: want create or update", mode)
		}
		if format == "" {
			switch strings.ToLower(filepath.Ext(file)) {
			case ".jsonl", ".ndjson", ".json":
				format = "jsonl"
			case ".csv":
				format = "csv"
			default:
				return fmt.Errorf("cannot tell the format of %q from its extension: give --format jsonl or csv", file)
			}
		}
		var in io.Reader = cmd.InOrStdin()
		if file != "-" {
			f, err := os.Open(file)
			if err != nil {
				return err
			}
			defer f.Close()
			in = f
		}
		list, err := readImport(in, format)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		c, asJSON, err := cc.setup()
		if err != nil {
			return err
		}
		errw := cmd.ErrOrStderr()
		start := time.Now()
		last := time.Time{}
		progress := func(done, failed int) {
			if quiet || (time.Since(last) < time.Second && done < len(list)) {
				return
			}
			last = time.Now()
			fmt.Fprintf(errw, "imported %d/%d (%d failed), %.0f/s\n", done-failed, len(list), failed,
				float64(done)/max(time.Since(start).Seconds(), 0.001))
		}
		res, err := importEnrollments(cmd.Context(), c, list, mode, progress)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if asJSON {
			if err := writeJSON(w, res); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(w, "Imported %d of %d enrollments in %s; %d failed.\n", res.Imported, res.Total,
				time.Since(start).Round(time.Millisecond), res.Failed)
			for i, e := range res.Errors {
				if i == maxImportErrors {
					fmt.Fprintf(w, "  … and %d more (-o json lists all)\n", len(res.Errors)-i)
					break
				}
				fmt.Fprintf(w, "  %s: %d %s\n", e.RegistrationID, e.ErrorCode, e.ErrorStatus)
			}
		}
		if res.Failed > 0 {
			return &exitError{code: 1}
		}
		return nil
	}
	return cmd
}
