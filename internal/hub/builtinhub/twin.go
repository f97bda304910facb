package builtinhub

import (
	"maps"
	"time"
)

// Twin metadata and concurrency; the twin limits are enroll's (enroll.MaxTwin*).
const (
	metaLastUpdated  = "$lastUpdated"
	metaLastVersion  = "$lastUpdatedVersion"
	twinTimeLayout   = "2006-01-02T15:04:05.0000000Z"
	neverTime        = "0001-01-01T00:00:00Z"
	versionKey       = "$version"
	metadataKey      = "$metadata"
	maxPatchAttempts = 10
)

// section is the desired or the reported half of a twin: the properties,
// their version, and a metadata tree mirroring them with the time (and for
// desired the version) of each property's last change.
type section struct {
	Version int64          `json:"version"`
	Props   map[string]any `json:"props"`
	Meta    map[string]any `json:"meta"`
}

func newSection(now time.Time) section {
	return section{Version: 1, Props: map[string]any{}, Meta: metaNode(now, 0)}
}

// patch merges p into the section (null deletes), bumps its version and
// records the change in the metadata. It reports whether anything changed.
func (s *section) patch(p map[string]any, now time.Time, withVersion bool) bool {
	if len(p) == 0 {
		return false
	}
	s.Version++
	v := int64(0)
	if withVersion {
		v = s.Version
	}
	if s.Props == nil {
		s.Props = map[string]any{}
	}
	if s.Meta == nil {
		s.Meta = metaNode(now, v)
	}
	mergeInto(s.Props, s.Meta, p, now, v)
	stamp(s.Meta, now, v)
	return true
}

// replace makes props the section's properties and returns the patch that
// turns the old properties into the new ones (null for removed keys).
func (s *section) replace(props map[string]any, now time.Time, withVersion bool) map[string]any {
	diff := map[string]any{}
	for k := range s.Props {
		if _, ok := props[k]; !ok {
			diff[k] = nil
		}
	}
	maps.Copy(diff, props)
	s.Version++
	v := int64(0)
	if withVersion {
		v = s.Version
	}
	s.Props = map[string]any{}
	s.Meta = metaNode(now, v)
	mergeInto(s.Props, s.Meta, props, now, v)
	return diff
}

// view is the section as the service sees it: properties plus $version and
// $metadata.
func (s *section) view() map[string]any {
	out := make(map[string]any, len(s.Props)+2)
	maps.Copy(out, s.Props)
	out[versionKey] = s.Version
	if s.Meta != nil {
		out[metadataKey] = s.Meta
	}
	return out
}

// deviceView is the section as devices see it: properties plus $version.
func (s *section) deviceView() map[string]any {
	out := make(map[string]any, len(s.Props)+1)
	maps.Copy(out, s.Props)
	out[versionKey] = s.Version
	return out
}

// mergeInto applies a JSON merge patch to dst, keeping the metadata tree
// meta in step.
func mergeInto(dst, meta map[string]any, patch map[string]any, now time.Time, version int64) {
	for k, pv := range patch {
		if pv == nil {
			delete(dst, k)
			delete(meta, k)
			continue
		}
		if pm, ok := pv.(map[string]any); ok {
			dm, ok := dst[k].(map[string]any)
			mm, _ := meta[k].(map[string]any)
			if !ok || mm == nil {
				dm = map[string]any{}
				dst[k] = dm
				mm = metaNode(now, version)
				meta[k] = mm
			}
			mergeInto(dm, mm, pm, now, version)
			stamp(mm, now, version)
			continue
		}
		dst[k] = pv
		meta[k] = metaNode(now, version)
	}
}

func metaNode(now time.Time, version int64) map[string]any {
	m := map[string]any{}
	stamp(m, now, version)
	return m
}

func stamp(m map[string]any, now time.Time, version int64) {
	m[metaLastUpdated] = now.UTC().Format(twinTimeLayout)
	if version > 0 {
		m[metaLastVersion] = version
	}
}
