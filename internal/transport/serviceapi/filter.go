package serviceapi

import (
	"context"

	"github.com/dpsd/dpsd/internal/query"
	"github.com/dpsd/dpsd/internal/store"
)

// maxExamined bounds the records one filtered page reads. A filter that
// matches few records would otherwise read the whole collection for one
// page; instead the page ends early, possibly empty, with a continuation
// after the last record read, and the client asks for the next one.
const maxExamined = 5000

// filteredPage reads records from opt.After on, in the store's order, and
// returns the views of those q matches, at most opt.Limit; last is the id
// to continue after and more whether records remain. Without a filter it
// is one store page.
func filteredPage[R, V any](ctx context.Context, q *query.Query, opt store.ListOptions,
	list func(context.Context, store.ListOptions) ([]R, bool, error), view func(R) (id string, v V)) (out []V, last string, more bool, err error) {
	out = make([]V, 0)
	after := opt.After
	examined := 0
	for {
		o := opt
		o.After = after
		if q.Filters() {
			// Read ahead: most records may not match.
			o.Limit = min(max(opt.Limit, 100), maxExamined-examined)
		}
		recs, storeMore, err := list(ctx, o)
		if err != nil {
			return nil, "", false, err
		}
		for i, r := range recs {
			id, v := view(r)
			examined++
			ok, err := q.MatchValue(v)
			if err != nil {
				return nil, "", false, err
			}
			after = id
			if ok {
				out = append(out, v)
			}
			if len(out) == opt.Limit || examined == maxExamined {
				return out, after, storeMore || i < len(recs)-1, nil
			}
		}
		if !storeMore || len(recs) == 0 {
			return out, after, false, nil
		}
	}
}
