# Sourced by run.sh and validate.sh: HMAC_SHARED_SECRET from the environment, or the development
# secret documented in the README (never use it outside your machine), saying which.
DEV_SECRET="edge-warden-development-secret-do-not-use-in-production"
if [[ -z "${HMAC_SHARED_SECRET:-}" ]]; then
  echo "HMAC_SHARED_SECRET is not set: using the development secret from the README (not for production)."
  export HMAC_SHARED_SECRET="$DEV_SECRET"
else
  echo "Using HMAC_SHARED_SECRET from your environment."
fi
