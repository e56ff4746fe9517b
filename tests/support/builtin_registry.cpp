// The suite's one copy of every stage's code: the test files are compiled with
// KVCODEC_SEPARATE_REGISTRY (registry/builtin.hpp) and see only the registry's declarations.
#define KVCODEC_REGISTRY_IMPLEMENTATION
#include "kvcodec/registry/builtin.hpp"
