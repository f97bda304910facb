package allocate

import (
	"crypto/sha256"
	"encoding/binary"
	"math"
	"strings"

	"github.com/dpsd/dpsd/internal/linkedhub"
)

// Hashed picks a hub for registrationID by weighted rendezvous hashing
// (highest random weight): every hub gets the score w / -ln(u), where w is
// its allocation weight and u in (0,1) comes from SHA-256 of the lower-cased
// hub name and registration id; the highest score wins. The winner is hub i
// with probability w_i / Σw, the choice depends only on the id and the
// candidate set (not its order), and linking or unlinking a hub moves only
// the devices that must move. SHA-256 keeps the result the same on every
// node, architecture and dpsd version. It returns nil when hubs is empty.
func Hashed(registrationID string, hubs []*linkedhub.Hub) *linkedhub.Hub {
	key := strings.ToLower(registrationID)
	var best *linkedhub.Hub
	bestScore := math.Inf(-1)
	for _, h := range hubs {
		s := score(key, strings.ToLower(h.Name), h.AllocationWeight)
		// Equal scores are astronomically unlikely; break them by name so
		// the result still does not depend on the order of hubs.
		if s > bestScore || (s == bestScore && best != nil && strings.ToLower(h.Name) < strings.ToLower(best.Name)) {
			best, bestScore = h, s
		}
	}
	return best
}

// score is one hub's rendezvous score for a device.
func score(key, hub string, weight int) float64 {
	if weight < linkedhub.MinWeight {
		weight = linkedhub.DefaultWeight
	}
	sum := sha256.Sum256([]byte(hub + "\x00" + key))
	// 53 random bits as a float in the open interval (0,1).
	u := (float64(binary.BigEndian.Uint64(sum[:8])>>11) + 0.5) / (1 << 53)
	return float64(weight) / -math.Log(u)
}
