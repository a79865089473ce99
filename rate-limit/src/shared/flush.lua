-- The shared mode's flush: the counts one instance admitted since its last
-- flush, added to the window counts every instance adds to, and the totals
-- read back, in one atomic step, applied at most once per flush id (a call
-- sent again after a lost reply only reads).
-- KEYS[1]: the instance's marker for this lane (the id of the last flush of
-- the lane applied); KEYS[2..]: window counts, bare integers.
-- ARGV[1]: the flush id; ARGV[2]: the marker's lifetime in ms; then for each
-- count key: the delta (written with a minus sign when this instance never
-- sent this window's count before: its expiry is set again, in case the key
-- was left without one), the end of the window's use in ms since the epoch
-- (its expiry), and the total the instance expects (what it last read plus
-- the delta).
-- Returns Redis' TIME (seconds, microseconds), then, for each count whose
-- total is not the expected one, its position (1 for KEYS[2]) and its
-- total: a count left out has the total expected.
-- Every count key written expires when its window stops counting; the
-- arguments go to the commands as the strings they came as.
local t = redis.call('TIME')
local out = {tonumber(t[1]), tonumber(t[2])}
local replay = redis.call('GET', KEYS[1]) == ARGV[1]
for i = 2, #KEYS do
  local key, delta, expiry, expected = KEYS[i], ARGV[3 * i - 3], ARGV[3 * i - 2], ARGV[3 * i - 1]
  local first = string.byte(delta, 1) == 45
  if first then
    delta = string.sub(delta, 2)
  end
  local total
  if replay then
    total = redis.pcall('GET', key)
    total = tonumber(total) or 0
  else
    local d = tonumber(delta)
    total = redis.pcall('INCRBY', key, delta)
    if type(total) ~= 'number' or total < d then
      -- Not a count of this mode (another type, text, a negative number):
      -- replaced, so nothing written to the key switches limiting off.
      redis.call('SET', key, delta, 'PXAT', expiry)
      total = d
    elseif total == d or first then
      redis.call('PEXPIREAT', key, expiry)
    end
  end
  if total ~= tonumber(expected) then
    out[#out + 1] = i - 1
    out[#out + 1] = total
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return out
