package provision

import (
	"context"

	"github.com/dpsd/dpsd/api/dps"
)

// StaticAllocator assigns the hub an enrollment names: its legacy
// iotHubHostName, or its only entry in iotHubs. It is the allocator used
// until linked hubs and the other policies are configured.
type StaticAllocator struct{}

// Allocate implements Allocator.
func (StaticAllocator) Allocate(_ context.Context, in *AllocationInput) (*Allocation, error) {
	_, hubs, legacy, _, _ := in.Policy()
	switch {
	case legacy != "":
		return &Allocation{Hub: legacy}, nil
	case len(hubs) == 1:
		return &Allocation{Hub: hubs[0]}, nil
	case len(hubs) == 0:
		return nil, dps.Errorf(dps.CodeNoHubForAllocation, "The enrollment names no IoT hub to assign the device to.")
	default:
		return nil, dps.Errorf(dps.CodeNoHubForAllocation, "Static allocation needs exactly one IoT hub; the enrollment names %d.", len(hubs))
	}
}
