package dps

// Bulk operation modes. Clients spell updateIfMatchETag with either case of
// the final "t"; compare with strings.EqualFold.
const (
	BulkCreate            = "create"
	BulkUpdate            = "update"
	BulkUpdateIfMatchETag = "updateIfMatchETag"
	BulkDelete            = "delete"
)

// MaxBulkItems is the most enrollments or groups one bulk request may carry.
const MaxBulkItems = 10

// BulkEnrollmentOperation is the body of POST /enrollments.
type BulkEnrollmentOperation struct {
	Mode        string                 `json:"mode"`
	Enrollments []IndividualEnrollment `json:"enrollments"`
}

// BulkEnrollmentGroupOperation is the body of POST /enrollmentGroups.
type BulkEnrollmentGroupOperation struct {
	Mode             string            `json:"mode"`
	EnrollmentGroups []EnrollmentGroup `json:"enrollmentGroups"`
}

// BulkEnrollmentOperationResult answers a bulk request with per-item errors.
type BulkEnrollmentOperationResult struct {
	IsSuccessful bool                           `json:"isSuccessful"`
	Errors       []BulkEnrollmentOperationError `json:"errors"`
}

// BulkEnrollmentOperationError is one failed item of a bulk request.
type BulkEnrollmentOperationError struct {
	RegistrationID    string `json:"registrationId,omitempty"`
	EnrollmentGroupID string `json:"enrollmentGroupId,omitempty"`
	ErrorCode         int    `json:"errorCode"`
	ErrorStatus       string `json:"errorStatus"`
}

// QuerySpecification is the body of the query endpoints.
type QuerySpecification struct {
	Query string `json:"query"`
}

// Query paging and item-type headers.
const (
	HeaderMaxItemCount = "x-ms-max-item-count"
	HeaderContinuation = "x-ms-continuation"
	HeaderItemType     = "x-ms-item-type"
	HeaderErrorCode    = "x-ms-error-code"
)

// Values of the x-ms-item-type header.
const (
	ItemTypeEnrollment         = "Enrollment"
	ItemTypeEnrollmentGroup    = "EnrollmentGroup"
	ItemTypeDeviceRegistration = "DeviceRegistration"
)
