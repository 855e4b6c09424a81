#!/usr/bin/env bash
# A real Redmine for the integration tests, from Debian's packages (Redmine 5.0, SQLite, puma).
#
#   tests/system/redmine-setup.sh [API_KEY [SQLITE_FILE]]
#
# SQLITE_FILE: a database of its own (an absolute path; created when missing, its folder owned by www-data), set
# up instead of Debian's default instance's database. The tests keep a pristine one this way and serve a copy of
# it per session, so nothing another Redmine user left in the default database reaches them. Without it, the
# default instance is set up (to try the connector by hand).
#
# Idempotent and fast when everything is there (one `rails runner`, a few seconds):
#   - installs redmine, redmine-sqlite and puma if missing (as root, or with sudo), with the bundler work-around;
#   - adds puma to /usr/share/redmine/Gemfile.local and bundles locally;
#   - migrates the database and loads the default data (English) when missing (a new file: about a minute);
#   - enables the REST API, turns e-mail notifications off, sets the admin user's API key to API_KEY;
#   - creates the custom fields and time-entry activities the tests and seeds use, when missing.
# The last line of its output is JSON: {"time_entry:Billable": N, "time_entry:Invoice number": N,
# "issue:Invoice number": N}. Progress goes to stderr.
set -euo pipefail

# Redmine only accepts API keys of letters and digits (Token.find_token), 40 characters at most.
api_key="${1:-t2itestapikey000000000000000000000000000}"
if ! [[ "$api_key" =~ ^[A-Za-z0-9]{1,40}$ ]]; then
  echo "redmine-setup: the API key must be 1-40 letters or digits (Redmine ignores others): $api_key" >&2
  exit 2
fi
database="${2:-}"
if [ -n "$database" ] && ! [[ "$database" =~ ^/[A-Za-z0-9._/-]+$ ]]; then
  echo "redmine-setup: SQLITE_FILE must be an absolute path of letters, digits and ._/-: $database" >&2
  exit 2
fi
redmine_dir=/usr/share/redmine
packages=(redmine redmine-sqlite puma)

log() { echo "redmine-setup: $*" >&2; }

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
  as_www=(runuser -u www-data --)
elif command -v sudo >/dev/null; then
  sudo=(sudo)
  as_www=(sudo -u www-data)
else
  echo "redmine-setup: needs root or sudo" >&2
  exit 1
fi

# One set-up at a time (two test processes starting together).
lock="${TMPDIR:-/tmp}/t2i-redmine-setup.lock"
exec 9>>"$lock"
chmod a+rw "$lock" 2>/dev/null || true
flock 9

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# Quiet unless it fails: the package scripts print every migration.
quietly() {
  local out
  out="$(mktemp)"
  if ! "$@" >"$out" 2>&1; then
    tail -n 40 "$out" >&2
    rm -f "$out"
    echo "redmine-setup: failed: $*" >&2
    return 1
  fi
  rm -f "$out"
}

bundler_env=(BUNDLE_SILENCE_ROOT_WARNING=1)
set_bundler_version() {
  local version
  version="$(dpkg-query -W -f='${Version}' ruby-bundler)" # [epoch:]upstream-revision
  version="${version#*:}"
  bundler_env+=("BUNDLER_VERSION=${version%%-*}")
}

missing=()
for package in "${packages[@]}"; do
  installed "$package" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]} (about 30 s to 2 minutes)"
  export DEBIAN_FRONTEND=noninteractive
  quietly "${sudo[@]}" apt-get update -qq
  # Ruby's security update ships a newer default bundler than Debian's ruby-bundler, and Redmine's post-install
  # step then fails with Bundler::GemNotFound: pin BUNDLER_VERSION to the ruby-bundler package's version.
  installed ruby-bundler || quietly "${sudo[@]}" apt-get install -y --no-install-recommends ruby-bundler
  set_bundler_version
  # `dpkg --configure -a` first: finishes a Redmine left half-configured by an install without the work-around.
  quietly "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${bundler_env[@]}" dpkg --configure -a
  quietly "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive "${bundler_env[@]}" \
    apt-get install -y --no-install-recommends "${packages[@]}"
elif installed ruby-bundler; then
  set_bundler_version
fi

# Serve it with puma: puma must be in the bundle.
if ! grep -qs "^gem 'puma'" "$redmine_dir/Gemfile.local"; then
  log "adding puma to $redmine_dir/Gemfile.local"
  echo "gem 'puma'" | "${sudo[@]}" tee -a "$redmine_dir/Gemfile.local" >/dev/null
fi
if ! grep -qs "^    puma " "$redmine_dir/Gemfile.lock"; then
  log "bundle install --local"
  (cd "$redmine_dir" && quietly "${sudo[@]}" env "${bundler_env[@]}" bundle install --local)
fi

ruby="$(cat <<'RUBY'
# Runs inside Redmine (rails runner, production, as www-data). Prints the custom field ids as JSON, last.
require 'json'

if ActiveRecord::Base.connection.migration_context.needs_migration?
  warn 'redmine-setup: migrating the database'
  ActiveRecord::Tasks::DatabaseTasks.migrate
  Redmine::Plugin.migrate
  ActiveRecord::Base.descendants.each(&:reset_column_information)
end
if Redmine::DefaultData::Loader.no_data?
  warn 'redmine-setup: loading the default data (en)'
  Redmine::DefaultData::Loader.load('en')
end

Setting.rest_api_enabled = '1' unless Setting.rest_api_enabled?
# No e-mail: nothing listens on port 25, and mail jobs would read SQLite from other threads.
Setting.notified_events = [] unless Setting.notified_events.empty?

admin = User.find_by!(login: 'admin')
admin.update_columns(must_change_passwd: false) if admin.must_change_passwd?
admin.update_columns(status: User::STATUS_ACTIVE) unless admin.active?
key = ENV.fetch('T2I_API_KEY')
admin.api_key # creates the API token when missing
token = Token.find_by!(user_id: admin.id, action: 'api')
if token.value != key
  Token.where(value: key).where.not(id: token.id).delete_all
  token.update_columns(value: key)
end

def custom_field(klass, name, format, **attributes)
  field = klass.find_by(name: name)
  return field if field

  warn "redmine-setup: creating #{klass.name} #{name.inspect}"
  klass.create!(name: name, field_format: format, is_required: false, visible: true, is_filter: true,
                searchable: false, **attributes)
end

fields = {
  'time_entry:Billable' => custom_field(TimeEntryCustomField, 'Billable', 'bool', default_value: '1'),
  'time_entry:Invoice number' => custom_field(TimeEntryCustomField, 'Invoice number', 'string'),
  'issue:Invoice number' => custom_field(IssueCustomField, 'Invoice number', 'string', is_for_all: true,
                                         trackers: Tracker.sorted.to_a),
}

['Remote support', 'On-site support', 'Consulting', 'Project work', 'Internal'].each do |name|
  activity = TimeEntryActivity.find_by(project_id: nil, name: name)
  if activity.nil?
    warn "redmine-setup: creating time entry activity #{name.inspect}"
    TimeEntryActivity.create!(name: name, active: true)
  elsif !activity.active?
    activity.update!(active: true)
  end
end

puts JSON.generate(fields.transform_values(&:id))
RUBY
)"

database_env=()
if [ -n "$database" ]; then
  # Rails takes DATABASE_URL over database.yml; the folder must be www-data's (SQLite writes a journal beside it).
  "${sudo[@]}" install -d -o www-data -g www-data -m 0755 "$(dirname "$database")"
  [ -e "$database" ] || log "creating the database $database"
  database_env=("DATABASE_URL=sqlite3:$database")
fi

cd "$redmine_dir"
output="$("${as_www[@]}" env RAILS_ENV=production REDMINE_INSTANCE=default "${database_env[@]}" \
  T2I_API_KEY="$api_key" bin/rails runner "$ruby")"
tail -n 1 <<<"$output"
