// Package enroll keeps enrollments, enrollment groups and registration
// records in the store and applies Azure's rules to them: validation,
// defaults, generated keys, etags and which fields a read may show. The
// service API and the provisioning engine both go through it, so there is one
// stored representation of each.
package enroll
