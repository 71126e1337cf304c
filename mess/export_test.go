package mess

// WatchCount is how many key watches are open.
func (s *Service) WatchCount() int { return s.watchCount() }
