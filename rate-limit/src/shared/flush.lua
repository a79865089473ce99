-- The shared mode's flush: the counts one instance admitted since its last
-- flush, added to the window counts every instance adds to, and the totals
-- read back, in one atomic step, applied at most once per flush id (a call
-- sent again after a lost reply only reads).
-- KEYS[1]: the instance's marker for this lane (the id of the last flush of
-- the lane applied); KEYS[2..]: window counts, bare integers.
-- ARGV[1]: the flush id; ARGV[2]: the marker's lifetime in ms; then for each
-- count key: the delta, the end of the window's use in ms since the epoch
-- (its expiry), and 1 if this instance never sent this window's count
-- before (its expiry is set again, in case the key was left without one).
-- Returns Redis' TIME (seconds, microseconds), then each count's total.
-- Every count key written expires when its window stops counting; the
-- arguments go to the commands as the strings they came as.
local t = redis.call('TIME')
local out = {tonumber(t[1]), tonumber(t[2])}
local replay = redis.call('GET', KEYS[1]) == ARGV[1]
for i = 2, #KEYS do
  local key, delta, expiry, first = KEYS[i], ARGV[3 * i - 3], ARGV[3 * i - 2], ARGV[3 * i - 1]
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
    elseif total == d or first == '1' then
      redis.call('PEXPIREAT', key, expiry)
    end
  end
  out[i + 1] = total
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return out
