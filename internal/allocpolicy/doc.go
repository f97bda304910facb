// Package allocpolicy keeps in-process custom allocation policies: CEL
// expressions (github.com/google/cel-go) that decide where a device goes,
// evaluated inside dpsd instead of calling a webhook. An enrollment or
// group selects one with Azure's own field,
// customAllocationDefinition.webhookUrl = "policy:NAME", so every Azure SDK
// and CLI can set it.
//
// A policy sees what a webhook would receive and answers what a webhook
// answers (see Compile and Program.Eval); the allocator then applies the
// same outcome rules as to a webhook's answer. Policies are type-checked
// when saved (a bad one is refused with the compiler's message and
// position), versioned with etags, and bounded in size and in cost per
// evaluation.
package allocpolicy
