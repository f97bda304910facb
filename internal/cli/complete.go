package cli

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/dpsd/dpsd/api/admin"
	"github.com/dpsd/dpsd/client/service"
)

// completionTimeout bounds the service call behind one completion, so a
// shell never hangs on TAB.
const completionTimeout = 3 * time.Second

// maxCompletions bounds the ids one completion lists.
const maxCompletions = 500

// completeFrom returns a completion function that lists ids from the
// service found with cc's flags (as the command itself would), keeping
// those that start with what was typed. A service that cannot be reached
// completes nothing.
func completeFrom(cc *clientCmd, list func(ctx context.Context, c *service.Client) ([]string, error)) cobra.CompletionFunc {
	return func(cmd *cobra.Command, _ []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		c, err := cc.conn.client()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), completionTimeout)
		defer cancel()
		ids, err := list(ctx, c)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var out []string
		for _, id := range ids {
			if strings.HasPrefix(strings.ToLower(id), strings.ToLower(toComplete)) {
				out = append(out, id)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeOnce completes a positional NAME only while none was given.
func completeOnce(f cobra.CompletionFunc) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		return f(cmd, args, toComplete)
	}
}

// ids pages through a query for the ids of its items.
func ids[T any](ctx context.Context, query func(context.Context, service.QueryOptions) (*service.Page[T], error), id func(*T) string) ([]string, error) {
	items, err := collect(ctx, maxCompletions, query)
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(items))
	for i := range items {
		out = append(out, id(&items[i]))
	}
	return out, nil
}

// linkedHubNames lists the linked hubs' host names.
func linkedHubNames(ctx context.Context, c *service.Client) ([]string, error) {
	var hubs []admin.LinkedHub
	if err := c.Do(ctx, http.MethodGet, linkedHubsPath, nil, nil, &hubs, ""); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(hubs))
	for _, h := range hubs {
		names = append(names, h.Name)
	}
	return names, nil
}
