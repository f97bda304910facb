// Package allocate decides which linked IoT hub a registering device is
// assigned to. Its Allocator implements provision.Allocator with Azure DPS's
// four policies:
//
//   - hashed (the default): weighted rendezvous hashing of the lower-cased
//     registration id over the candidate hubs, so each hub receives a share
//     of devices proportional to its allocation weight and a device stays on
//     the same hub while the candidate set and weights are unchanged;
//   - geoLatency: the candidate hubs whose location is nearest to the
//     device's network, by a configured network→locations map (see
//     NetworkLocation), hashed among themselves; hashed over all candidates
//     when the map says nothing about the device;
//   - static: the one hub the enrollment names;
//   - custom: a webhook called with Azure's contract (see Webhook).
//
// Candidate hubs are the enrollment's iotHubs that are linked; when the
// enrollment names none, its legacy iotHubHostName; when it names neither,
// every linked hub whose applyAllocationPolicy is true. A device that
// re-registers under a "never reprovision" policy (updateHubAssignment
// false) has exactly one candidate: its current hub.
package allocate
