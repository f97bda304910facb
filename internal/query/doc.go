// Package query parses and evaluates the subset of the SQL-like query
// language of Azure IoT Hub DPS that dpsd filters on.
//
// Azure's service API accepts a QuerySpecification with any text and
// ignores it: every query returns everything. dpsd accepts
//
//	*
//	SELECT * FROM <collection> [WHERE <condition>]
//
// where a condition combines comparisons with AND, OR, NOT and
// parentheses. A comparison is a property path (dotted, names compared
// without regard to case, e.g. provisioningStatus or
// attestation.type) followed by =, !=, <> and a literal, or by
// [NOT] IN and a parenthesised list of literals, or IS [NOT] NULL.
// Literals are 'strings' (” for a quote), numbers, true, false and null;
// strings compare without regard to case, as dpsd's ids do. A property an
// item lacks is null. Anything else — other selections, functions,
// ordering, joins — is refused with a *dps.Error 400 naming what and
// where, rather than ignored.
package query
