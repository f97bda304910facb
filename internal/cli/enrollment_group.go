package cli

import (
	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/dps"
	"github.com/dpsd/dpsd/client/service"
)

func newEnrollmentGroupCmd() *cobra.Command {
	k := &enrollmentKind[dps.EnrollmentGroup]{
		use: "enrollment-group", one: "enrollment group", many: "enrollment groups", short: "group",
		deleteNote: " (its registration records stay)",
		group:      true,
		idFlag:     groupIDFlag,
		newItem:    func(id string) *dps.EnrollmentGroup { return &dps.EnrollmentGroup{EnrollmentGroupID: id} },
		idOf:       func(g *dps.EnrollmentGroup) string { return g.EnrollmentGroupID },
		view:       groupShared,
		apply:      (*enrollmentFlags).applyGroup,
		forUpdate:  func(g *dps.EnrollmentGroup, etag string) { g.ETag = etag },

		get:            (*service.Client).GetEnrollmentGroup,
		getAttestation: (*service.Client).GetEnrollmentGroupAttestation,
		create:         (*service.Client).CreateEnrollmentGroup,
		update:         (*service.Client).UpdateEnrollmentGroup,
		delete:         (*service.Client).DeleteEnrollmentGroup,
		query:          (*service.Client).QueryEnrollmentGroups,
		print:          printEnrollmentGroup,
		printList:      printEnrollmentGroups,
	}
	return k.command()
}

// groupIDFlag adds the required --enrollment-group-id flag.
func groupIDFlag(cmd *cobra.Command, id *string) {
	cmd.Flags().StringVar(id, "enrollment-group-id", "", "ID of the enrollment group (az: --enrollment-id, --eid)")
	_ = cmd.MarkFlagRequired("enrollment-group-id")
}
