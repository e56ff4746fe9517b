// The build's one copy of every stage's code (target kvcodec_registry_impl): the kvcodec command and
// the test suites are compiled with KVCODEC_SEPARATE_REGISTRY (registry/builtin.hpp) and see only the
// registry's declarations, so the stages are compiled once per build instead of once per program and
// once more in every store suite that builds a codec.
#define KVCODEC_REGISTRY_IMPLEMENTATION
#include "kvcodec/registry/builtin.hpp"
