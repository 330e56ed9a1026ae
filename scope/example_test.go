package scope_test

import (
	"fmt"
	"time"

	"cheops/scope"
)

func ExampleParse() {
	s, err := scope.Parse("{posts:(paris|rome)&berlin , images : around(paris,10ms)}")
	if err != nil {
		panic(err)
	}
	fmt.Println(s)
	_, err = scope.Parse("{posts: &berlin}")
	fmt.Println(err)
	// Output:
	// {posts: (paris | rome) & berlin, images: around(paris, 10ms)}
	// scope: column 9: expected site name, found '&'
}

func ExampleScope_Plan() {
	v := scope.View{Local: "paris", Sites: map[string]scope.SiteInfo{
		"paris":  {Name: "paris", State: scope.Up, RTT: map[string]time.Duration{"berlin": 12 * time.Millisecond}},
		"berlin": {Name: "berlin", State: scope.Up},
		"rome":   {Name: "rome", State: scope.Down},
	}}
	s, _ := scope.Parse("{posts: paris & rome ; berlin | rome}")
	p, err := s.Plan("posts", v)
	if err != nil {
		panic(err)
	}
	fmt.Println("alternative", p.Chosen+1, "of", len(p.Alternatives), "targets", p.Required())
	for _, x := range p.Excluded {
		fmt.Printf("%s: %s\n", x.Site, x.Reason)
	}
	// Output:
	// alternative 2 of 2 targets [berlin]
	// rome: unreachable (down)
	// paris: alternative 1 (paris & rome) cannot run fully: rome is unreachable
}
